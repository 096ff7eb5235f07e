"""The BIDS App's command line: the parser and the one Config it builds (workflows/config.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import add_version, argtypes
from .argtypes import UsageParser
from ..core.errors import EX_USAGE, InputError
from ..core.fitting.registry import model_kind
from ..options import BY_NAME, OPTIONS, SECTIONS, help_text
from ..workflows.config import Config
from ..workflows.execution import parse_plugin_args

#: Value conversions the options table names by string (options.Option.parse) and that live above it.
PARSERS = {"plugin_args": lambda text: text if isinstance(text, dict) else parse_plugin_args(text)}


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from options.OPTIONS: one argument group per Config section."""
    p = UsageParser(prog="dmrimc-bids", description="Histology-informed dMRI microstructure maps (Histo-uSim) "
                                                "from a BIDS dataset.")
    add_version(p, "dmrimc-bids")
    groups = {"run": p}
    for section, title in SECTIONS.items():
        if section != "run":
            groups[section] = p.add_argument_group(vascular_group_title() if section == "vascular" else title)
    exclusive = groups["tissue"].add_mutually_exclusive_group()
    for option in OPTIONS:
        if option.flags:
            _add_argument(groups[option.section], option)
        if option.name == "sim_substrates":   # the command line's form of sim_substrates (_simulation_options)
            groups["tissue"].add_argument("--substrate-svg", nargs="+", type=Path, metavar="SVG",
                                          help="with --dictionary-source simulate: traced cell substrates "
                                               "(default: the generated ones)")
            exclusive.add_argument("--substrate-width-um", type=float, metavar="W", help="width of each substrate SVG [µm]")
            exclusive.add_argument("--substrate-scale", type=float, metavar="UM_PER_UNIT", help="µm per SVG unit")
    return p


def _add_argument(group, option) -> None:
    """One option's argument; its argparse default is None (absent), the Config's default comes from the table."""
    kwargs = {"help": help_text(option).replace("%", "%%")}
    if not option.flags[0].startswith("-"):   # a positional
        group.add_argument(option.flags[0], **kwargs, **({"type": option.type} if option.type else {}),
                           **({"choices": option.choices} if option.choices else {}))
        return
    kwargs["dest"], kwargs["default"] = option.name, None
    if option.action:
        kwargs["action"] = option.action
    else:
        for key in ("choices", "nargs", "metavar"):
            if getattr(option, key) is not None:
                kwargs[key] = getattr(option, key)
        if option.type is not None:
            kwargs["type"] = getattr(argtypes, option.type) if isinstance(option.type, str) else option.type
    group.add_argument(*option.flags, **kwargs)


def given(args, name: str) -> bool:
    """Whether option ``name`` was on the command line."""
    return getattr(args, name, None) is not None


def option_values(args) -> dict:
    """{option: Config value} of every option on the command line, converted (options.Option.parse); a
    value that does not convert is a usage error naming the flag."""
    out = {}
    for option in OPTIONS:
        if not option.flags:
            continue
        dest = "out_dir" if option.name == "out_dir" else option.name
        value = getattr(args, "output_dir" if option.name == "out_dir" else dest, None)
        if value is None:
            continue
        parse = PARSERS[option.parse] if isinstance(option.parse, str) else option.parse
        try:
            out[option.name] = parse(value) if parse else value
        except ValueError as exc:
            raise InputError(f"{option.flag} {' '.join(map(str, value)) if isinstance(value, list) else value}",
                             exit_code=EX_USAGE, fix=str(exc)) from None
    return out


def vascular_group_title() -> str:
    """The vascular options' help title, from the models that exist and the defaults that run."""
    from ..core.fitting.ivim import IVIM_ESTIMATORS
    ivim = f"IVIM ({' or '.join(IVIM_ESTIMATORS)}; default {BY_NAME['ivim_estimator'].default})"
    fit = ("by default the joint tissue + vascular fit, otherwise its signal's SpinFlowSim fit"
           if BY_NAME["model"].default == "joint" else "SpinFlowSim fit of its vascular signal")
    return f"vascular branch ({ivim}; {fit})"


def resolve_model(values: dict) -> str:
    """The model of the run: --model as given (an explicit --model joint with options it cannot take is a
    usage error); without --model, joint unless --estimator ml, --dictionary-source simulate or --vascular
    off asks for the separate branches."""
    conflicts = Config.from_dict({k: values[k] for k in ("estimator", "dictionary_source", "vascular")
                                  if k in values}).joint_conflicts()
    model = values.get("model")
    if model is None:
        return "separate" if conflicts else BY_NAME["model"].default
    if model == "joint" and conflicts:
        raise InputError("--model joint", exit_code=EX_USAGE, fix=conflicts[0])
    return model


def check_arguments(args, values: dict) -> dict:
    """Usage errors that argparse cannot see (exit 64, one line each); returns ``values`` with the run's
    model resolved and, for --dictionary-source simulate, its substrates."""
    out, raw = args.output_dir.resolve(), args.bids_dir.resolve()
    if out == raw:
        raise InputError("the output folder is the BIDS dataset itself", path=args.output_dir, exit_code=EX_USAGE,
                         fix="write elsewhere, e.g. <bids_dir>/derivatives/dmrimc-bids")
    if out.is_relative_to(raw) and not out.is_relative_to(raw / "derivatives"):
        raise InputError("the output folder is inside the raw BIDS dataset", path=args.output_dir, exit_code=EX_USAGE,
                         fix="write outside it, or under <bids_dir>/derivatives/ (e.g. derivatives/dmrimc-bids)")
    from ..bids.derivatives import check_output_folder
    check_output_folder(args.output_dir)
    if args.work_dir:
        check_output_folder(args.work_dir, "work folder (-w)")
    for option in OPTIONS:   # the declared bounds (options.Option.minimum / maximum)
        value = values.get(option.name)
        if value is None or (option.minimum is None and option.maximum is None):
            continue
        if (option.minimum is not None and value < option.minimum) or (option.maximum is not None and value > option.maximum):
            limits = " and ".join(t for t in (f">= {option.minimum:g}" if option.minimum is not None else "",
                                              f"<= {option.maximum:g}" if option.maximum is not None else "") if t)
            raise InputError(f"{option.flag} {value:g}", exit_code=EX_USAGE, fix=f"give {option.flag} {limits}")
    if model_kind(values.get("estimator", BY_NAME["estimator"].default)) != "ml":
        ml_only = [o.flag for o in OPTIONS if o.ml_only and o.name in values]
        if ml_only:
            raise InputError(f"{', '.join(ml_only)}: only for --estimator ml", exit_code=EX_USAGE,
                             fix=f"add --estimator ml, or drop {', '.join(ml_only)}")
    values["model"] = resolve_model(values)
    t2 = [BY_NAME[n].flag for n in ("t2_tissue_ms", "t2_blood_ms") if n in values]
    if t2 and (values["model"] != "joint" or len(t2) != 2 or min(values["t2_tissue_ms"], values["t2_blood_ms"]) <= 0):
        raise InputError(f"{', '.join(t2)}", exit_code=EX_USAGE,
                         fix="give both --t2-tissue-ms and --t2-blood-ms (> 0 ms), with --model joint")
    split, top = (values.get(n, BY_NAME[n].default) for n in ("ivim_b_split", "ivim_b_max"))
    if not 0 < split < top:
        raise InputError(f"--ivim-b-split {split:g} / --ivim-b-max {top:g}", exit_code=EX_USAGE,
                         fix="give 0 < --ivim-b-split < --ivim-b-max (s/mm²)")
    simulate = values.get("dictionary_source") == "simulate"
    if values.get("dictionary") and simulate:
        raise InputError("--dictionary and --dictionary-source simulate exclude each other", exit_code=EX_USAGE,
                         fix="drop one of them")
    if simulate:
        values["sim_substrates"] = _simulation_substrates(args, values)
    return values


def config_from_args(args) -> Config:
    """The run's Config from the parsed command line: every option's value converted (option_values),
    checked (check_arguments), every path absolute and every named file present (Config.validate)."""
    values = check_arguments(args, option_values(args))
    return Config.from_dict(values, command=" ".join(sys.argv)).validate()


def _simulation_substrates(args, values: dict) -> list:
    """The substrates of --dictionary-source simulate, from --substrate-svg; bad values give one error line
    (exit 64)."""
    from ..core.simulate.histo import default_simulation_substrates, load_substrate

    if any(d <= 0 for d in values.get("sim_d0", [])) or any(k < 0 for k in values.get("sim_kappa", [])):
        raise InputError("--sim-d0 must be > 0 and --sim-kappa >= 0", exit_code=EX_USAGE,
                         fix="e.g. --sim-walkers 2000 --sim-d0 0.8 1.5 2.25 3 --sim-kappa 0 20 40")
    if not args.substrate_svg:
        return default_simulation_substrates()
    if args.substrate_width_um is None and args.substrate_scale is None:
        raise InputError("--substrate-svg needs --substrate-width-um or --substrate-scale", exit_code=EX_USAGE,
                         fix="give the substrate's width in µm (or µm per SVG unit)")
    specs = [{"svg": str(p.resolve()), "width_um": args.substrate_width_um,
              "scale_um_per_unit": args.substrate_scale} for p in args.substrate_svg]
    for spec in specs:
        load_substrate(spec)  # one clear error now rather than a crash in the graph
    return specs
