"""Optimizers, the stepper `Optimizer`, schedules and scheduling callbacks (`from miniai.sgd import *`).

Explained in nbs/05_sgd.ipynb. Parts: `optimizers` (SGD, Momentum, RMSProp, Adam, Nesterov, Adagrad,
Lamb), `steppers` (fastai's stepper-callback Optimizer and its steppers), `schedules` (pure schedule functions,
CosineAnnealing, OneCycle), `callbacks` (BaseSchedCB, BatchSchedCB, EpochSchedCB, HasLearnCB, RecorderCB, ParamSchedCB,
OneCycleSchedCB, fit_one_cycle).
"""
from .callbacks import (
    BaseSchedCB,
    BatchSchedCB,
    EpochSchedCB,
    HasLearnCB,
    OneCycleSchedCB,
    ParamSchedCB,
    RecorderCB,
    fit_one_cycle,
)
from .optimizers import SGD, Adagrad, Adam, Lamb, Momentum, Nesterov, RMSProp
from .schedules import (
    CosineAnnealing,
    OneCycle,
    Scheduler,
    combine_scheds,
    get_mom,
    plot_lrs,
    sched_cos,
    sched_exp,
    sched_lin,
    sched_lrs,
    sched_no,
    set_mom,
)
from .steppers import (
    Optimizer,
    adagrad_step,
    adam_step,
    average_grad,
    average_sqr_grad,
    l2_reg,
    lamb_step,
    momentum_step,
    nesterov_step,
    rms_prop_step,
    rms_sqr_grad,
    sgd_step,
    step_stat,
    sum_sqr_grad,
    weight_decay,
)

__all__ = ['SGD', 'Momentum', 'RMSProp', 'Adam', 'Nesterov', 'Adagrad', 'Lamb',
           'Optimizer', 'weight_decay', 'l2_reg', 'sgd_step', 'step_stat', 'average_grad', 'average_sqr_grad',
           'rms_sqr_grad', 'sum_sqr_grad', 'momentum_step', 'nesterov_step', 'rms_prop_step', 'adam_step',
           'adagrad_step', 'lamb_step',
           'sched_lin', 'sched_cos', 'sched_no', 'sched_exp', 'combine_scheds', 'Scheduler', 'CosineAnnealing',
           'OneCycle', 'get_mom', 'set_mom', 'sched_lrs', 'plot_lrs',
           'BaseSchedCB', 'BatchSchedCB', 'EpochSchedCB', 'HasLearnCB', 'RecorderCB', 'ParamSchedCB', 'OneCycleSchedCB',
           'fit_one_cycle']
