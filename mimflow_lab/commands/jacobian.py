"""``mimflow-lab jacobian``: σmax, σmin and κ of the flow's Jacobian per sample, and Figure 5."""
from __future__ import annotations

import click

from mimflow_lab import options
from mimflow_lab.options import command

# mimflow_lab.jacobian.METHODS, spelled out so that `--help` does not import torch (a test keeps them equal)
METHODS = ("fast", "paper", "exact")


@command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@options.compare("Another checkpoint (e.g. the STARFlow-like baseline) analysed on the same images or noise.")
@click.option("--data", default="digits", show_default=True,
              help="Dataset of the latents: 'digits', an ImageFolder directory or an ADM .npz.")
@options.split("test", "Split of --data whose images are encoded")
@click.option("--source", type=click.Choice(["data", "samples"]), default="data", show_default=True,
              help="data: z = encoder(x) of a seeded class-balanced subset of --split; "
                   "samples: z = f^-1(eps), eps ~ N(0, I).")
@click.option("--latents", "latents_file", type=click.Path(dir_okay=False), default=None,
              help="Analyse the latents in this .npz (z (N,K,D), y (N,); z_compare, z_compare2, ... for each --compare) instead.")
@click.option("--samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Number of latents to analyse.")
@options.batch_size(32, "Samples solved at once (J is block-diagonal over a batch).")
@click.option("--method", type=click.Choice(METHODS), default="fast", show_default=True,
              help="fast: Lanczos with exact inverse products; paper: power + CG inverse iteration (App. B); "
                   "exact: jacrev + svdvals (D <= 8192).")
@click.option("--blocks", type=click.IntRange(min=1), default=None, help="Analyse only the first N flow blocks.")
@click.option("--unconditional", is_flag=True, help="Label -1 for the class-conditioned block.")
@click.option("--tol", default=1e-6, show_default=True,
              help="Relative residual ||A x - theta x|| / theta at which an eigenpair counts as converged.")
@click.option("--max-products", default=20000, show_default=True,
              help="Per-sample product budget of the paper route; samples over it are reported unconverged.")
@click.option("--spectrum", is_flag=True,
              help="Also estimate the density of log sigma per latent (stochastic Lanczos quadrature on J^T J "
                   "and J^-T J^-1, certified against log|det J|); with --method fast only.")
@click.option("--probes", default=8, show_default=True, help="Probe vectors per latent for --spectrum (>= 2).")
@click.option("--lanczos-steps", default=40, show_default=True,
              help="Lanczos steps (quadrature nodes) per probe on J^T J for --spectrum.")
@click.option("--inverse-steps", type=int, default=None,
              help="Lanczos steps per probe on J^-T J^-1 for --spectrum (the costly end: the flow's sequential "
                   "inverse)  [default: --lanczos-steps]")
@click.option("--probe", type=click.Choice(["rademacher", "gaussian"]), default="rademacher", show_default=True,
              help="Distribution of the --spectrum probes.")
@click.option("--per-block", is_flag=True,
              help="Also sigma_max, sigma_min, kappa and log|det| of every flow block's own Jacobian (fast route).")
@options.seed("Seed of the start vectors, the data subset and --source samples.")
@options.weights()
@options.device()
@options.out_dir("results/jacobian", "jacobian.json, latents.npz, fig5_jacobian.png/.pdf")
def jacobian(checkpoint: str | None, compare: tuple[str, ...], data: str, split: str, source: str,
             latents_file: str | None, samples: int, batch_size: int, method: str, blocks: int | None,
             unconditional: bool, tol: float, max_products: int, spectrum: bool, probes: int, lanczos_steps: int,
             inverse_steps: int | None, probe: str, per_block: bool, seed: int, weights: str, device: str,
             out: str) -> None:
    """Extreme singular values and condition number of the latent flow's Jacobian at N latents (Fig. 5);
    with --spectrum / --per-block also the whole log-sigma density and each block's share (Fig. 5b)."""
    import torch

    from mimflow_lab.defaults import resolve_checkpoints
    from mimflow_lab.jacobian.analysis import Settings, run_jacobian

    torch.backends.cuda.matmul.allow_tf32 = False  # no TF32 anywhere near a condition number
    torch.backends.cudnn.allow_tf32 = False
    settings = Settings(method=method, samples=samples, batch=batch_size, blocks=blocks,
                        source="file" if latents_file else source, data=None if latents_file else data,
                        split=None if latents_file else split, unconditional=unconditional,
                        seed=seed, tol=tol, max_products=max_products, spectrum=spectrum, probes=probes,
                        lanczos_steps=lanczos_steps, inverse_steps=inverse_steps, probe=probe, per_block=per_block)
    (checkpoint,) = resolve_checkpoints([checkpoint] if checkpoint else [])
    result = run_jacobian([checkpoint, *compare], out, settings, latents_file, weights, device)
    for m in result["models"]:
        s = m["summary"]
        median = lambda k: s[k].get("median", float("nan"))  # noqa: E731
        click.echo(f"{m['label']}: {s['n_ok']}/{s['n']} certified ({s['n_not_converged']} not converged, "
                   f"{s['n_failed_checks']} failed checks); median sigma_max {median('sigma_max'):.4g}, "
                   f"sigma_min {median('sigma_min'):.4g}, log10 kappa {median('log10_kappa'):.3f}; "
                   f"{m['seconds_per_sample']:.2f} s/sample")
        if "spectrum" in s:
            below = ", ".join(f"{v:.3g} below {k} sigma_max" for k, v in s["spectrum"]["median_fraction_below"].items())
            click.echo(f"  spectrum: {s['spectrum']['n_certified']}/{s['n']} densities certified; median {below}")
        if "per_block" in s:
            kappas = " ".join(f"{v:.2f}" for v in s["per_block"]["median_log10_kappa"])
            click.echo(f"  per block: median log10 kappa {kappas} ({s['per_block']['n_ok']}/{s['n']} within bounds)")
    figures = ", ".join(f.get("png", "") for f in (result["figure"], result.get("figure_5b", {})) if f)
    click.echo(f"wrote {out}/jacobian.json, {out}/latents.npz, {figures}")
