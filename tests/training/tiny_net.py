"""A tiny net with the project's model interface, for the training tests (no optax here:
the test that restores without optax imports it)."""

import flax.linen as nn


class TinyNet(nn.Module):
    """Same interface as the project's models: (logits [N, K], {stage: feature map}).

    Flattens (no global pooling) so that the position-coded classes of quadrant_data are learnable.
    """

    batch_norm: bool = True
    num_classes: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        h = nn.Conv(8, (3, 3), strides=2)(x)
        if self.batch_norm:
            h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.relu(h)
        return nn.Dense(self.num_classes)(h.reshape(h.shape[0], -1)), {"stage1": h}
