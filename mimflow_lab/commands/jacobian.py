"""``mimflow-lab jacobian``: σmax, σmin and κ of the flow's Jacobian per sample, and Figure 5."""
from __future__ import annotations

import click


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--compare", type=click.Path(dir_okay=False), default=None,
              help="A second checkpoint (e.g. the STARFlow-like baseline) analysed on the same images/noise.")
@click.option("--data", default="digits", show_default=True,
              help="Dataset of the latents: 'digits', an ImageFolder directory or an ADM .npz (test split).")
@click.option("--source", default="data", show_default=True,
              help="'data': z = encoder(x) of dataset images; 'samples': z = f^-1(eps), eps ~ N(0, I).")
@click.option("--latents", "latents_file", type=click.Path(dir_okay=False), default=None,
              help="Analyse the latents in this .npz (z (N,K,D), y (N,); z_compare for --compare) instead.")
@click.option("--samples", default=256, show_default=True, help="Number of latents to analyse.")
@click.option("--batch", default=32, show_default=True, help="Samples solved at once (J is block-diagonal).")
@click.option("--method", default="fast", show_default=True,
              help="'fast' (Lanczos, exact inverse products), 'paper' (power + CG inverse iteration, App. B) "
                   "or 'exact' (jacrev + svdvals, D <= 8192).")
@click.option("--blocks", type=int, default=None, help="Analyse only the first N flow blocks.")
@click.option("--unconditional", is_flag=True, help="Label -1 for the class-conditioned block.")
@click.option("--tol", default=1e-6, show_default=True,
              help="Relative residual ||A x - theta x|| / theta at which an eigenpair counts as converged.")
@click.option("--max-products", default=20000, show_default=True,
              help="Per-sample product budget of the paper route; samples over it are reported unconverged.")
@click.option("--seed", default=0, show_default=True, help="Seed of the start vectors and of --source samples.")
@click.option("--weights", default="ema", show_default=True, help="'ema' or 'raw' checkpoint weights.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--out", default="results/jacobian", show_default=True, type=click.Path(file_okay=False),
              help="Output directory: jacobian.json, latents.npz, fig5_jacobian.png/.pdf.")
def jacobian(checkpoint, compare, data, source, latents_file, samples, batch, method, blocks, unconditional,
             tol, max_products, seed, weights, device, out) -> None:
    """Extreme singular values and condition number of the latent flow's Jacobian at N latents (Fig. 5)."""
    import torch

    from mimflow_lab.jacobian.analysis import Settings, run_jacobian

    torch.backends.cuda.matmul.allow_tf32 = False  # no TF32 anywhere near a condition number
    torch.backends.cudnn.allow_tf32 = False
    settings = Settings(method=method, samples=samples, batch=batch, blocks=blocks,
                        source="file" if latents_file else source, data=data, unconditional=unconditional,
                        seed=seed, tol=tol, max_products=max_products)
    result = run_jacobian([checkpoint] + ([compare] if compare else []), out, settings, latents_file, weights,
                          device)
    for m in result["models"]:
        s = m["summary"]
        median = lambda k: s[k].get("median", float("nan"))  # noqa: E731
        click.echo(f"{m['label']}: {s['n_ok']}/{s['n']} certified ({s['n_not_converged']} not converged, "
                   f"{s['n_failed_checks']} failed checks); median sigma_max {median('sigma_max'):.4g}, "
                   f"sigma_min {median('sigma_min'):.4g}, log10 kappa {median('log10_kappa'):.3f}; "
                   f"{m['seconds_per_sample']:.2f} s/sample")
    click.echo(f"wrote {out}/jacobian.json, {out}/latents.npz, {result['figure'].get('png', '')}")
