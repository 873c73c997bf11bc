"""Critic-based estimates: the JS bound from a discriminator's logits and the W1 bound from a WGAN critic's
scores (variational lower bounds, labelled so)."""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from . import _inputs as I
from .intervals import boot_mean, boot_note, percentile_ci
from .results import MetricError, Result


def critic_metric(name: str):
    def run(p, q, *, rng, boot_rng, bootstrap, confidence, scores="logits"):
        real = I.scores(p, "P", name)
        fake = I.scores(q, "Q", name)
        notes = []
        if name == "js_critic":
            if scores == "probabilities":
                if real.min() < 0 or real.max() > 1 or fake.min() < 0 or fake.max() > 1:
                    raise MetricError("scores='probabilities' needs values in [0, 1]")
                eps = 1e-7
                real, fake = (special.logit(np.clip(s, eps, 1 - eps)) for s in (real, fake))
                notes.append("probabilities clipped to [1e-7, 1-1e-7]; pass logits for an exact value")
            elif scores != "logits":
                raise MetricError(f"scores must be 'logits' or 'probabilities', got {scores!r}")
            # V = E_P log D(x) + E_Q log(1 - D(x)), with log sigmoid(l) = -softplus(-l), log(1 - sigmoid(l)) = -softplus(l).
            t_real, t_fake = -np.logaddexp(0.0, -real), -np.logaddexp(0.0, fake)
            combine = lambda r, f: 0.5 * (r + f + math.log(4.0))  # noqa: E731
            notes.insert(0, "variational lower bound: JS >= (V + log 4)/2 for any discriminator, equal at the "
                            "optimal one; a weak discriminator gives a loose (even negative) bound")
        else:
            if scores != "logits":
                raise MetricError("w1_critic takes raw critic outputs; scores must be 'logits'")
            t_real, t_fake = real, fake
            combine = lambda r, f: r - f  # noqa: E731
            notes.insert(0, "variational lower bound: W1 >= E_P f - E_Q f for a 1-Lipschitz f; WGAN-GP only "
                            "penalises the gradient norm, so the bound holds approximately")
        value = float(combine(t_real.mean(), t_fake.mean()))
        if bootstrap > 0:
            reps = combine(boot_mean(t_real, boot_rng, bootstrap), boot_mean(t_fake, boot_rng, bootstrap))
            ci = percentile_ci(reps, value, confidence)
            notes.append(boot_note(bootstrap, "scores on both sides"))
        else:
            ci = (value, value)
        est = ("discriminator (V + log 4)/2 from logits" if name == "js_critic" else "critic E_P f - E_Q f")
        return Result(value, ci, len(real), len(fake), "; ".join(notes), est)

    return run
