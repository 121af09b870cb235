"""The default recipe of `miniai train` as a learner: `build_learner` (the model, AdamW, cross entropy and the run's
callbacks) and `build_callbacks` (the optional ones its flags ask for).
Shown in nbs/12_inference.ipynb. Torch and the rest of miniai are imported when a learner is built, not with this
module, so that `miniai --help` and a refused command answer at once.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UsageError

__all__ = ['build_learner', 'build_callbacks']


def build_callbacks(args, out: Path) -> list:
    """The optional callbacks the flags ask for, imported only when asked for."""
    cbs = []
    if args.early_stop:
        from ..stopping import EarlyStoppingCB
        # the same quantity as best.pt, whose weights model.pt gets: the run's last weights stay in last.pt
        cbs.append(EarlyStoppingCB('valid_accuracy', patience=args.early_stop, restore_best=False))
    if args.clip:
        from ..gradients import GradientClipCB
        cbs.append(GradientClipCB(args.clip))
    if args.accumulate > 1:
        from ..gradients import GradientAccumulationCB
        cbs.append(GradientAccumulationCB(args.accumulate))
    if args.tensorboard:
        if importlib.util.find_spec('tensorboard') is None:   # say so now, not after the data has loaded
            raise UsageError("--tensorboard needs the tensorboard package: pip install 'miniai-learner[tensorboard]' "
                             "(or pip install tensorboard)")
        from ..tensorboard import TensorBoardCB
        cbs.append(TensorBoardCB(out / 'tensorboard'))
    if getattr(args, 'wandb', False):
        if importlib.util.find_spec('wandb') is None:
            raise UsageError("--wandb needs the wandb package: pip install 'miniai-learner[wandb]' (or pip install "
                             "wandb)")
        import os

        from ..wandb import WandBCB
        flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != 'resume'}
        cbs.append(WandBCB(flags, project=os.environ.get('WANDB_PROJECT', 'miniai'), dir=str(out)))
    return cbs


def build_learner(args, dls, out: Path, device):
    """The default recipe: conv model with GeneralRelu and BatchNorm, AdamW, cross entropy, and the run's callbacks."""
    import torch.nn.functional as F
    from torch import optim

    from ..callbacks import CSVLoggerCB, DeviceCB, MetricsCB, ProgressCB
    from ..checkpoint import SaveModelCB, TerminateOnNaNCB
    from ..distributed import DDPCB, is_distributed
    from ..learner import TrainLearner
    from ..metrics import MulticlassAccuracy
    from ..models import recipe_model
    from ..sgd import RecorderCB

    model = recipe_model()
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    cbs = [DeviceCB(device), metrics, ProgressCB(), CSVLoggerCB(out / 'metrics.csv'),
           SaveModelCB(out, monitor='valid_accuracy'), TerminateOnNaNCB(), RecorderCB(lr=lambda cb: cb.pg['lr'])]
    cbs += build_callbacks(args, out)
    if is_distributed(): cbs.append(DDPCB(device, seed=args.seed))
    return TrainLearner(model, dls, F.cross_entropy, lr=args.lr, cbs=cbs, opt_func=optim.AdamW)
