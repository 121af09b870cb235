"""miniai: a callback-driven training framework for PyTorch, in the tradition of the fast.ai course.

`import miniai` stays light; import what you use from its modules (`miniai.learner`, `miniai.datasets`, ...).
"""
__version__ = '0.1.0'
__all__ = ['__version__']
