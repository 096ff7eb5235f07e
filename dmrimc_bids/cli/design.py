"""`dmrimc-sim design`: judge a protocol before scanning (core/fitting/design.py).

    dmrimc-sim design --protocol dwi.tsv --snr 20 50 [--branch tissue|vascular] [--dictionary dict.npz]
        [--json design.json]

Prints, per SNR and parameter, the expected posterior contraction and Spearman ρ of the default
estimator for the protocol's fitted measurements, each dictionary entry estimated with its own
structure (substrate or network) left out. The vascular branch evaluates the flow dictionary (simulated
for the protocol from the generated networks unless --dictionary is given) on every b > 0.
"""

from __future__ import annotations

from ..core.simulate.flow.dictionary import DEFAULT_SPINS

from pathlib import Path

from ..core.errors import EX_USAGE, InputError

COLUMNS = (("contraction", "contraction", "{:.2f}"), ("contraction_p10", "P10", "{:.2f}"),
           ("contraction_p90", "P90", "{:.2f}"), ("rho", "rho", "{:.2f}"), ("medae", "MedAE", "{:.3g}"),
           ("medae_constant", "MedAE const", "{:.3g}"), ("coverage95", "cover95", "{:.2f}"),
           ("width95", "width95", "{:.3g}"))


def add_design_parser(sub, positive) -> None:
    """The `design` subcommand of dmrimc-sim; positive: the parser's type for numbers > 0."""
    d = sub.add_parser("design", help="expected identifiability (posterior contraction, rho) of a protocol and SNR")
    d.add_argument("--protocol", type=Path, required=True,
                   help="TSV (b, small_delta, big_delta) or DWI .json sidecar + .bval: the protocol to judge")
    d.add_argument("--bval", type=Path, default=None, help="the sidecar's .bval (default: beside it)")
    d.add_argument("--snr", type=positive(float), nargs="+", required=True,
                   help="SNR of the fitted (directionally averaged, b0-normalised) signal: 1/sigma; several allowed")
    d.add_argument("--dictionary", type=Path, default=None,
                   help="dictionary .npz (default: tissue branch, the embedded one; vascular branch, the flow "
                        "dictionary the pipeline simulates for the protocol from the generated networks, cached)")
    d.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dmrimc-bids" / "dictionaries",
                   help="where simulated flow dictionaries are cached (~/.cache/dmrimc-bids/dictionaries)")
    d.add_argument("--flow-spins", type=positive(int), default=DEFAULT_SPINS,
                   help=f"spins per realisation ({DEFAULT_SPINS})")
    d.add_argument("--branch", choices=("tissue", "vascular"), default="tissue",
                   help="tissue: b >= --vasc-threshold, magnitude (Rician) noise; vascular: every b > 0, "
                        "Gaussian noise (the vascular signal is a difference of magnitudes)")
    d.add_argument("--vasc-threshold", type=float, default=250.0, metavar="B",
                   help="tissue branch: smallest b fitted [s/mm²] (250, as the pipeline)")
    d.add_argument("--b0-threshold", type=float, default=2.0, metavar="B", help="b treated as 0 [s/mm²] (2)")
    d.add_argument("--samples", type=positive(int), default=1000, help="dictionary entries drawn (1000)")
    d.add_argument("--seed", type=int, default=0, help="noise and sampling seed (0)")
    d.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    d.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress messages")


def fitted_dictionary(args):
    """The dictionary matched to the measurements the pipeline would fit for --protocol and --branch: the
    tissue dictionary on b >= --vasc-threshold, or the flow dictionary on every b > 0 (vascular; without
    --dictionary the one the pipeline simulates for this protocol, flow_dictionary_for_protocol)."""
    from ..core.dictionary_default import load_selected
    from ..core.preprocess import vascular_filter
    from ..core.protocol import unique_measurements
    from ..bids.protocol import read_simulation_protocol

    if args.dictionary is not None and not Path(args.dictionary).is_file():
        raise InputError("dictionary not found", path=args.dictionary, exit_code=EX_USAGE,
                         fix="give a dictionary .npz written by dmrimc-sim, or leave --dictionary out")
    _, shells = unique_measurements(read_simulation_protocol(args.protocol, args.bval), args.b0_threshold)
    if args.branch == "vascular" and args.dictionary is None:
        from ..core.simulate.flow.dictionary import flow_dictionary_for_protocol
        path = flow_dictionary_for_protocol(shells, args.cache_dir, n_spins=args.flow_spins, seed=args.seed,
                                            b0_threshold=args.b0_threshold)[0]
        dic = load_selected(str(path))
    else:
        dic = load_selected(str(args.dictionary) if args.dictionary else None)
    threshold = args.vasc_threshold if args.branch == "tissue" else args.b0_threshold
    keep = vascular_filter(shells, threshold, dic.max_b, args.b0_threshold).keep
    if keep.size == 0:
        raise InputError("no measurement of the protocol is fitted", path=args.protocol, exit_code=EX_USAGE,
                         fix=f"add b between {threshold:g} and the dictionary's largest b ({dic.max_b:g} s/mm²)")
    return dic.match(shells.subset(keep), b0_threshold=args.b0_threshold, source=args.protocol)


def run_design(args) -> int:
    from ..core.fitting.design import expected_identifiability

    dic = fitted_dictionary(args)
    noise = "offset-gaussian" if args.branch == "tissue" else "gaussian"
    result = {}
    for snr in args.snr:
        result[f"{snr:g}"] = expected_identifiability(dic, snr, args.samples, args.seed, noise)
    print(format_table(result, len(dic.protocol), args))
    if args.json is not None:
        from ..core.atomic import write_json as atomic_write_json
        payload = {"protocol": str(args.protocol), "dictionary": str(args.dictionary or "embedded default"),
                   "branch": args.branch, "noise": noise, "samples": args.samples, "seed": args.seed,
                   "fitted_measurements": dic.protocol.to_rows(), "by_snr": result}
        atomic_write_json(args.json, payload)
        print(f"dmrimc-sim: wrote {args.json}")
    return 0


def format_table(result: dict, n_measurements: int, args) -> str:
    """The plain-text table of run_design: one block per SNR, one row per parameter."""
    lines = [f"expected identifiability: {args.protocol} ({n_measurements} fitted measurements), "
             f"{args.branch} branch, {args.samples} dictionary entries each estimated with its structure "
             f"left out (seed {args.seed})",
             "contraction: 1 - var_post/var_prior (median, P10, P90; < 0.1: not informed); rho: Spearman, truth "
             "vs estimate; MedAE const: the constant guess (prior median); cover95: 95 % interval coverage"]
    head = ["parameter"] + [label for _, label, _ in COLUMNS]
    for snr, params in result.items():
        lines += ["", f"SNR {snr}", "  ".join(f"{h:>12}" for h in head)]
        for name, fig in params.items():
            lines.append("  ".join([f"{name:>12}"] + [f"{fmt.format(fig[key]):>12}" for key, _, fmt in COLUMNS]))
    return "\n".join(lines)
