"""The adversarial term of TDD-adv (config group ``adversarial``): ``none`` or the PCM discriminator.

:class:`Adversarial` is the contract the training step talks to; :mod:`.losses` holds the pure functions
(hinge losses, the forward jump between noise levels).
"""

from tdd_lab.adversarial.base import Adversarial, NoAdversarial
from tdd_lab.adversarial.losses import forward_jump, hinge_d_loss, hinge_g_loss, sample_t_gan
from tdd_lab.adversarial.pcm import FeatureHead, PCMDiscriminator

__all__ = ["Adversarial", "FeatureHead", "NoAdversarial", "PCMDiscriminator", "forward_jump", "hinge_d_loss",
           "hinge_g_loss", "sample_t_gan"]
