"""A continuous condition with classifier-free guidance: two Gaussians shifted by a covariate c.

    python examples/conditional_guidance.py [--steps 4000] [--picture conditional.png]

Data: c ~ U(-1, 1), and given c, x = (4 s + 3 c, 0) + N(0, I) with s = -1 or +1 with probability 1/2.
The closed form: the conditional mean is E[x | c] = (3 c, 0), and the two modes sit at (+-4 + 3 c, 0),
each with half the mass. flowmatch's MLP takes c as a float condition; training drops it (to a row of
NaN, the learned null) for 10% of the rows, so the same model is also unconditional, and sampling can
guide: v = v_null + w (v_c - v_null).

The script samples at c = -1, -0.5, 0, 0.5, 1 and prints, against the closed form, the error of the
conditional mean, of each mode's mean (points split at x_1 = 3 c) and of the mode shares, at guidance
w = 1 (the plain conditional model) and w = 2.

Measured (defaults, seed 0, one CPU): at w = 1 every mode mean is within 0.07 of the closed form and
every share within 0.03 of 1/2; w = 2 is not the conditional distribution: it narrows each mode and
pushes the samples away from the unconditional ones (mode means off by up to 1.3 at c = +-1), as
guidance does.
"""

import argparse

import torch

import flowmatch
from flowmatch.data.toy import sample_builtin

SHIFT = 3.0
CONDITIONS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def draw(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g) * 2 - 1
    x = sample_builtin("two-gaussians", n, g) + torch.cat([SHIFT * c, torch.zeros_like(c)], dim=1)
    return x, c


def errors(samples: torch.Tensor, c: float) -> dict[str, float]:
    """Errors against the closed form at condition c (see the module docstring)."""
    right = samples[:, 0] > SHIFT * c
    mean_error = (samples.mean(0) - torch.tensor([SHIFT * c, 0.0])).norm().item()
    mode_error = max(
        (samples[side].mean(0) - torch.tensor([centre + SHIFT * c, 0.0])).norm().item() for side, centre in ((right, 4.0), (~right, -4.0))
    )
    return {"mean": mean_error, "modes": mode_error, "share": abs(right.float().mean().item() - 0.5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("-n", type=int, default=4000, help="samples per condition")
    parser.add_argument("--picture", default=None, help="write the samples per condition to this PNG")
    args = parser.parse_args()

    x, c = draw(args.rows, seed=0)
    result = flowmatch.train(data={"x": x, "conditions": c}, steps=args.steps, cond_dropout=0.1)
    flow = result.flow
    print(f"trained {result.step} steps in {result.seconds:.1f} s on {args.rows} rows with a float condition c")
    print(f"{'c':>5} {'w':>4}  {'|mean err|':>10} {'|mode mean err|':>15} {'|share - 1/2|':>13}")
    worst = {1.0: 0.0, 2.0: 0.0}
    drawn = {}
    for value in CONDITIONS:
        for w in (1.0, 2.0):
            samples = flow.sample(args.n, condition=torch.tensor([[value]]), guidance=w, seed=1)
            e = errors(samples, value)
            worst[w] = max(worst[w], e["modes"])
            drawn[(value, w)] = samples
            print(f"{value:5.1f} {w:4.1f}  {e['mean']:10.3f} {e['modes']:15.3f} {e['share']:13.3f}")
    print(f"largest mode-mean error: {worst[1.0]:.3f} at w = 1, {worst[2.0]:.3f} at w = 2")
    if args.picture:
        picture(drawn, args.picture)
        print(f"wrote {args.picture}")


def picture(drawn: dict, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(CONDITIONS), figsize=(3 * len(CONDITIONS), 6), sharex=True, sharey=True)
    for j, value in enumerate(CONDITIONS):
        for i, w in enumerate((1.0, 2.0)):
            ax = axes[i, j]
            s = drawn[(value, w)][:1500]
            ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="tab:orange")
            for centre in (-4.0, 4.0):
                ax.axvline(centre + SHIFT * value, color="tab:blue", lw=1)
            ax.set_title(f"c = {value:g}, w = {w:g}")
    fig.suptitle("samples per condition; blue: the closed-form mode centres (+-4 + 3c)")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
