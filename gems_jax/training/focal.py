"""Focal loss (Lin et al., ICCV 2017), the option Augusma et al. 2023 train with (alpha 1, gamma 2).

    FL = alpha (1 - p_t)^gamma CE,   CE = -log p_t,   p_t = softmax(logits)[label]

as the authors' `FocalLoss` (cross-entropy per element, p_t = exp(-CE), mean over the batch). It
returns the same sufficient statistics as `losses.masked_cross_entropy`, (sum, count), so a term
is their ratio and adds up exactly over any split of a sharded batch. gamma = 0 and alpha = 1 give
the cross-entropy. 1 - p_t is computed as -expm1(-CE), exact when p_t is close to 1, and floored
at the smallest normal float32 so that (1 - p_t)^gamma has a finite gradient for every gamma >= 0
when p_t rounds to exactly 1 (the floor changes no loss value: CE is then 0).
"""
import jax
import jax.numpy as jnp


def masked_focal_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                      alpha: float = 1.0, gamma: float = 2.0) -> tuple[jax.Array, jax.Array]:
  """Softmax focal loss with integer labels.

  Args:
    logits: float [..., C].
    labels: int [...]; any value where `mask` is False (e.g. -1) is ignored.
    mask: bool [...].
    alpha, gamma: the focal weight alpha (1 - p_t)^gamma, gamma >= 0.
  Returns:
    (sum of the per-element losses over the mask, number of masked-in elements), float32 scalars.
  """
  safe_labels = jnp.where(mask, labels, 0).astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  one_minus_pt = jnp.maximum(-jnp.expm1(-ce), jnp.finfo(jnp.float32).tiny)
  focal = alpha * one_minus_pt**gamma * ce
  return jnp.sum(jnp.where(mask, focal, 0.0)), jnp.sum(mask, dtype=jnp.float32)
