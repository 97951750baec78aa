"""Settings of the task-routed layers: :class:`RouterConfig` and the auxiliary losses'
:class:`MoEAuxLossConfig` it holds.

One :class:`RouterConfig` is built per model and passed unchanged to every routed
layer (MoE MLP and mixture of attention heads) and its router, so the layers of a
model share it: the auxiliary-loss weights a schedule changes, and ``impl``, apply to
all of them at once.
"""
from dataclasses import dataclass, field, fields
from typing import Optional, Union

from .experts import IMPLS

MI_FORMS = ('batch', 'heterogeneous')
ROUTER_INITS = ('zeros', 'trunc_normal')


def _from_dict(cls, cfg: dict, name: str):
    """``cls(**cfg)`` with an error that names the unknown keys and the valid ones."""
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ValueError(f'Unknown {name} keys {unknown}; valid keys are {valid}.')
    return cls(**cfg)


@dataclass
class MoEAuxLossConfig:
    """Weights (per layer; 0 turns a loss off) and options of the auxiliary losses.

    Args:
        mi_weight (float): Mutual-information loss. Mod-Squad: 0.005 (batch form);
            about 0.0005 for the heterogeneous form.
        mi_form (str): ``'heterogeneous'`` (one task per iteration) or ``'batch'``.
        momentum (float): Running-average momentum of the heterogeneous form.
        warmup_iters (int): Heterogeneous form: collections that only fill the running
            average (cumulative mean, loss 0) before the loss starts.
        switch_weight (float): Switch-Transformer load-balancing loss.
        z_weight (float): Router z-loss.
        eps (float): Added, as in the authors' code, to every router probability, to
            the token count that normalises P(t, e), to P(t) and P(e) and inside the
            log of the MI loss, and to the sum of exponentials of the z-loss.
            Defaults to 1e-4 (the authors' value); 0 gives the exact formulas.
    """
    mi_weight: float = 0.
    mi_form: str = 'heterogeneous'
    momentum: float = 0.99
    warmup_iters: int = 100
    switch_weight: float = 0.
    z_weight: float = 0.
    eps: float = 1e-4

    def __post_init__(self):
        if self.mi_form not in MI_FORMS:
            raise ValueError(f'mi_form must be one of {MI_FORMS}, got {self.mi_form!r}.')
        if not 0. <= self.momentum < 1.:
            raise ValueError(f'momentum must be in [0, 1), got {self.momentum}.')
        if self.warmup_iters < 0:
            raise ValueError(f'warmup_iters must be >= 0, got {self.warmup_iters}.')
        if self.eps < 0:
            raise ValueError(f'eps must be >= 0, got {self.eps}.')

    @property
    def enabled(self) -> bool:
        return self.mi_weight > 0 or self.switch_weight > 0 or self.z_weight > 0


@dataclass
class RouterConfig:
    """Routers, auxiliary losses and expert path of every routed layer of a model.

    Args:
        hidden (int, optional): Hidden width of 2-layer MLP routers
            (``C -> hidden -> E``, ReLU); None (default) for linear routers, as the
            authors.
        noisy_gating (bool): In training, add Gaussian noise of learned std to the
            logits (Shazeer et al., 2017). Defaults to False, as the authors' ViT-B.
        renormalize (bool): Gates renormalised to sum to 1 over the top-k, instead of
            the chosen probabilities + ``eps`` (Mod-Squad). Defaults to False.
        init (str): Output (and noise) layer of the routers: ``'zeros'`` (default;
            every expert equally likely, ties go to the lower index, so every token
            starts on experts 0..k-1) or ``'trunc_normal'`` (std 0.02, where the
            authors' routers really start: their model's weight initialisation
            re-draws the zeroed routers).
        bias (bool): A learned bias per task on the router outputs (and hidden
            layer). Defaults to True (zero-initialised); the authors' routers have
            none.
        eps (float): Added to the chosen probabilities to form the gates when not
            renormalising. Defaults to 1e-4, as the authors.
        aux_loss (MoEAuxLossConfig | dict): Auxiliary losses; off by default.
        impl (str): Path of the per-expert matmuls of both layer kinds, ``'auto'``,
            ``'loop'``, ``'fused'`` or ``'grouped_mm'``, see
            :func:`~.experts.grouped_linear`.
            Read at every forward, so it can be switched on a built model.
    """
    hidden: Optional[int] = None
    noisy_gating: bool = False
    renormalize: bool = False
    init: str = 'zeros'
    bias: bool = True
    eps: float = 1e-4
    aux_loss: Union[MoEAuxLossConfig, dict] = field(default_factory=MoEAuxLossConfig)
    impl: str = 'auto'

    def __post_init__(self):
        if isinstance(self.aux_loss, dict):
            self.aux_loss = _from_dict(MoEAuxLossConfig, self.aux_loss,
                                       'router_cfg.aux_loss')
        if not isinstance(self.aux_loss, MoEAuxLossConfig):
            raise TypeError(f'aux_loss must be a MoEAuxLossConfig or a dict of its '
                            f'fields, got {self.aux_loss!r}.')
        if self.init not in ROUTER_INITS:
            raise ValueError(f'init must be one of {ROUTER_INITS}, got {self.init!r}.')
        if self.impl not in IMPLS:
            raise ValueError(f'impl must be one of {IMPLS}, got {self.impl!r}.')
        if self.hidden is not None and self.hidden <= 0:
            raise ValueError(f'hidden must be a positive width or None, got '
                             f'{self.hidden}.')
        if self.eps < 0:
            raise ValueError(f'eps must be >= 0, got {self.eps}.')

    @classmethod
    def build(cls, cfg: Union[None, dict, 'RouterConfig']) -> 'RouterConfig':
        """A :class:`RouterConfig` from None (the defaults), a dict of its fields
        (e.g. a config's ``router_cfg``) or an instance (returned as is)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, cls):
            return cfg
        return _from_dict(cls, cfg, 'router_cfg')
