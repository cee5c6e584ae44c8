"""DLDR inside other training loops: :mod:`dldr.integrations.transformers_callback`
(:class:`DLDRTrainerCallback` for a Hugging Face ``Trainer``) and
:mod:`dldr.integrations.lightning_callback` (:class:`DLDRLightningCallback`).  Both need the
optional packages of ``requirements-integrations.txt``; the shared logic, :class:`TwoPhase`, is pure
torch."""
from .phases import TwoPhase

__all__ = ['TwoPhase']
