"""``pulse-jax``: argument parsing and orchestration only; the work lives in library functions."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import traceback
import typing
from pathlib import Path

from pulse_jax.config import PulseConfig, RunOptions, degradation_flag
from pulse_jax.degrade import Degradation
from pulse_jax.errors import PulseJaxError
from pulse_jax.fields import help_of, is_flag
from pulse_jax.flag_types import number, path_arg, positive_int, seed_int, shard_arg, tri_state, whole_number
from pulse_jax.generators import registry
from pulse_jax.job import OutputOptions

PROBLEMS = """problems and their flags (an input at the model's resolution is factor 1: no downscaling):
  super-resolution        (default: bicubic)          pulse-jax upsample faces/ --model M --out runs/
  noisy tiny faces        --degradation bicubic+noise:0.05
  denoising               --degradation noise:0.05     (inputs at the model's resolution)
  deblurring              --degradation kernel:blur.npy   (or kernel:blur.png; +box to downscale too)
  demosaicing             --degradation bayer:RGGB     (a 1-channel mosaic, or RGB: each pixel's filter colour)
  inpainting              --degradation bicubic+mask --mask known.png
  colourisation           --degradation bicubic+gray   (automatic for grayscale inputs)
"""


def _flag_kind(cls: type, field: dataclasses.Field) -> dict:
    """argparse keywords for one field, from its type (and its parser or choices, if it names them)."""
    kind = typing.get_type_hints(cls)[field.name]
    if field.metadata.get("parse") is not None:
        return {"type": field.metadata["parse"]}
    if kind is bool:
        return {"action": "store_true"}
    if kind == bool | None:
        return {"type": tri_state, "metavar": "{auto,on,off}"}
    args = [a for a in typing.get_args(kind) if a is not type(None)] if typing.get_args(kind) else [kind]
    if len(args) == 1 and args[0] in (int, float, str):
        choices = field.metadata.get("choices")
        return {"type": {int: whole_number, float: number, str: str}[args[0]],
                **({"choices": choices} if choices else {})}
    raise TypeError(f"{cls.__name__}.{field.name}: a flag cannot read {kind}; give the field a parse= function "
                    "(pulse_jax.fields.option) or cli=False")


def flag_help(field: dataclasses.Field) -> str:
    text = help_of(field)
    shown = str(field.default) if field.default not in (None, False, dataclasses.MISSING) else ""
    return f"{text} (default: {shown})" if shown and "default" not in text.lower() else text


def add_fields(group, cls: type, *, reference_spellings: bool = False, dest_prefix: str = "",
               only_given: bool = False) -> list[str]:
    """One flag per field of the dataclass ``cls`` (those that are flags), from its type, help and
    metadata; -> their dests. ``reference_spellings``: also --loss_str and -loss_str, as the reference
    spells them. ``only_given``: a flag that is not given leaves no attribute (its field keeps its own
    default)."""
    dests = []
    for f in dataclasses.fields(cls):
        if not is_flag(f):
            continue
        names = [f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"]
        if reference_spellings:
            names += [f"--{f.name}", f"-{f.name}"]
        names = list(dict.fromkeys(names + list(f.metadata.get("aliases", ()))))
        kw = _flag_kind(cls, f)
        if f.metadata.get("metavar"):
            kw["metavar"] = f.metadata["metavar"]
        default = argparse.SUPPRESS if only_given else (None if f.default is dataclasses.MISSING else f.default)
        group.add_argument(*names, dest=dest_prefix + f.name, default=default, help=flag_help(f), **kw)
        dests.append(dest_prefix + f.name)
    return dests


def config_from_args(args: argparse.Namespace) -> PulseConfig:
    return PulseConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PulseConfig)})


FAMILY_DEST = "generator."  # the dests of the families' own options


def add_generator_options(parser: argparse.ArgumentParser) -> None:
    """The families' SearchOptions as flags: a field several families share is one flag."""
    seen: dict[str, list[str]] = {}
    for family in registry.families():
        for f in dataclasses.fields(family.generator.SearchOptions):
            seen.setdefault(f.name, []).append(family.title)
    group = parser.add_argument_group("the generator's form in the search (by family: " + "; ".join(
        f"--{name.replace('_', '-')}: {', '.join(titles)}" for name, titles in seen.items()) + ")")
    added: set[str] = set()
    for family in registry.families():
        options = family.generator.SearchOptions
        fresh = [f for f in dataclasses.fields(options) if f.name not in added]
        if fresh:
            subset = dataclasses.make_dataclass(options.__name__, [(f.name, typing.get_type_hints(options)[f.name], f)
                                                                   for f in fresh], frozen=True)
            add_fields(group, subset, dest_prefix=FAMILY_DEST, only_given=True)
            added.update(f.name for f in fresh)


def generator_options_from_args(args: argparse.Namespace, generator):
    """The family's SearchOptions from the flags given (None when none are); a flag of another family
    is refused by name."""
    given = {k[len(FAMILY_DEST):]: v for k, v in vars(args).items() if k.startswith(FAMILY_DEST)}
    if not given:
        return None
    fields = {f.name for f in dataclasses.fields(generator.SearchOptions)}
    wrong = sorted(set(given) - fields)
    if wrong:
        title = registry.family(generator.architecture).title
        raise PulseJaxError(f"--{wrong[0].replace('_', '-')} does not apply to this model ({title}); leave it out")
    return generator.SearchOptions(**given)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One flag per RunOptions field (how the search runs; recorded in the report as run_options)."""
    g = p.add_argument_group("how the search runs (RunOptions)")
    add_fields(g, RunOptions)
    g.add_argument("--devices", type=positive_int, metavar="K",
                   help="use this process's first K devices (default: all)")
    add_generator_options(p)


def run_options_from_args(args: argparse.Namespace, generator) -> RunOptions:
    """The run options the flags say (resolved once, by the job that takes them)."""
    devices = None
    if args.devices is not None:
        import jax

        local = jax.local_devices()
        if not 1 <= args.devices <= len(local):
            raise PulseJaxError(f"--devices {args.devices}: this process has {len(local)} device(s); give 1 to "
                                f"{len(local)}")
        devices = tuple(local[:args.devices])
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunOptions) if is_flag(f)}
    return RunOptions(**values, devices=devices, generator=generator_options_from_args(args, generator))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-jax",
                                description="PULSE photo upsampling on StyleGAN v1 and StyleGAN2, in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("convert", help="convert PULSE's synthesis.pt / mapping.pt, or a network file (NVIDIA's "
                                   "pickles of StyleGAN and StyleGAN2, rosinality's .pt), into a model directory; "
                                   "torchvision's VGG16 and lpips's heads into a perceptual model",
                   add_help=False)

    up = sub.add_parser("upsample", help="upsample low-resolution images (files or folders)",
                        epilog=PROBLEMS, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("inputs", nargs="+", help="image files or folders of images (square, side dividing R)")
    up.add_argument("--model", required=True, help="model directory from pulse-jax convert")
    up.add_argument("--out", required=True, type=path_arg, help="output folder")
    up.add_argument("--seeds", "--duplicates", "-duplicates", type=positive_int, default=1,
                    help="results searched per input (the reference's -duplicates)")
    up.add_argument("--seed", type=seed_int, default=0, help="random seed")
    up.add_argument("--batch-size", type=positive_int,
                    help="inputs searched together (x seeds each). Default: on a CPU by the model's resolution, "
                         "about 32 inputs x seeds at 32-64 px, 4 at 128 px, 1 from 256 px (measured); on a GPU or "
                         "TPU about 32 per device (throughput grows up to there); halved when it does not fit")
    add_fields(up, OutputOptions, reference_spellings=True)
    add_run_options(up)
    up.add_argument("--init-latents", metavar="FILE",
                    help="start every search from saved latents instead of random draws: a <stem>_latents.npz "
                         "(its latent and noise maps: continue a search) or NVIDIA's projected_w.npz (w only; "
                         "the noise maps drawn); one seed in the file starts every seed")
    up.add_argument("--perceptual", metavar="DIR",
                    help="a perceptual model (pulse-jax convert --vgg16 ... --lpips-heads ...): for an LPIPS term in "
                         "--loss-str, e.g. 100*L2+0.05*GEOCROSS+0.5*LPIPS, and the spread's diversity in LPIPS")
    up.add_argument("--fit", type=positive_int, metavar="SIZE",
                    help="centre-crop each input to a square and resize it to SIZE (bicubic) instead of refusing "
                         "sizes that are not square or do not divide the resolution")
    up.add_argument("--mask", help="with --degradation ...+mask: an image the inputs' size, white where the "
                                   "input is known (the loss ignores the rest: inpainting)")
    up.add_argument("--align", action="store_true",
                    help="inputs are photos: find and align every face (dlib, FFHQ crop), then upsample them; "
                         "faces are downscaled to --fit (default 32)")
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    up.add_argument("--shard", dest="input_shard", type=shard_arg, metavar="I/N",
                    help="search only the I-th (from 0) of N shares of the inputs, dealt by name: N independent "
                         "processes (a Slurm job array, a Kubernetes indexed Job) with the same command and I = "
                         "0..N-1 cover every input once into one --out; each keeps its own journal there")
    dist = up.add_argument_group("several processes (hosts, or one per GPU): run the same command in each; "
                                 "each searches its share of the inputs into the shared --out folder")
    dist.add_argument("--distributed", action="store_true",
                      help="join a job of several processes, found from Slurm, Open MPI or Cloud TPU, or from "
                           "the three options below")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (implies --distributed)")
    dist.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the job")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    dist.add_argument("--join-timeout", type=positive_int, default=300, metavar="SECONDS",
                      help="how long a process waits for the others to start (default 300)")
    add_fields(up.add_argument_group("what the search looks for (PulseConfig: the reference's options, same "
                                     "names and defaults)"), PulseConfig, reference_spellings=True)

    rep = sub.add_parser("report", help="write report.json and index.html of an output folder from its run "
                                        "journals, and print a summary")
    rep.add_argument("out", help="an output folder of pulse-jax upsample")

    ren = sub.add_parser("render", help="draw the images of saved latents again (upsample --save-latents, or "
                                        "NVIDIA's projected_w.npz)")
    ren.add_argument("latents", nargs="+", help="<stem>_latents.npz files")
    ren.add_argument("--model", required=True, help="the model directory they were found with")
    ren.add_argument("--out", required=True, type=path_arg, help="output folder: <stem>_seed<k>.png per seed")
    ren.add_argument("--force", action="store_true", help="render with a model other than the one recorded")

    ev = sub.add_parser("evaluate", help="PSNR, SSIM (and LPIPS) and consistency of a run's results against ground "
                                         "truths")
    ev.add_argument("run", help="an output folder of pulse-jax upsample")
    ev.add_argument("--truth", required=True, help="folder of ground truths, <stem>.png per input")
    ev.add_argument("--perceptual", metavar="DIR", help="a perceptual model (pulse-jax convert --vgg16 ...): LPIPS of "
                    "each result against its truth too")

    al = sub.add_parser("align", help="find and align the faces in photos, as PULSE's reference does")
    al.add_argument("photos", nargs="+", help="photo files or folders")
    al.add_argument("--out", required=True, type=path_arg, help="output folder: <stem>_<k>.png per face")
    al.add_argument("--size", type=positive_int, default=32, help="output side, dividing 1024 (default 32)")

    demo = sub.add_parser("demo", help="ground truth -> low resolution -> search, written as a sheet")
    demo.add_argument("--model", help="model directory (default: a small random-weight generator)")
    demo.add_argument("--out", default="demo_out", type=path_arg, help="output folder (default: demo_out)")
    demo.add_argument("--seeds", type=positive_int, default=4)
    demo.add_argument("--size", type=positive_int, default=8, help="low-resolution side (default 8)")
    demo.add_argument("--steps", type=positive_int, default=200,
                      help="search steps (default 200: the random demo generator converges slower than FFHQ)")
    demo.add_argument("--seed", type=seed_int, default=0)
    demo.add_argument("--arch", choices=list(registry.demo_choices()), default=registry.names()[0],
                      help="the random generator's family when no --model is given (default "
                           f"{registry.names()[0]})")
    demo.add_argument("--degradation", default=Degradation(), type=degradation_flag, metavar="SPEC",
                      help="how the ground truth becomes the input, as for upsample (e.g. noise:0.05 with "
                           "--size 128, bayer, kernel:blur.npy+box, bicubic+mask: a centred square unknown)")
    demo.add_argument("--quiet", action="store_true")
    return p


def _upsample(args) -> int:
    from pulse_jax.distributed import ProcessGroup, initialize

    config = config_from_args(args)
    if args.seeds < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise PulseJaxError("--seeds and --batch-size must be at least 1")
    stop = threading.Event()
    if not (args.distributed or any(v is not None for v in (args.coordinator, args.num_processes, args.process_id))):
        def say(message):
            print(message, file=sys.stderr)

        with stop_on_signals(stop, say, args.early_signals) as received:
            report = _upsample_here(args, config, ProcessGroup(), say, stop)
        code = _summary(report, args, config, "")
        return _stopped_code(received, say) or code
    group = initialize(args.coordinator, args.num_processes, args.process_id, args.join_timeout)
    tag = f"[process {group.index}/{group.count}]"

    def log(message):
        print(f"{tag} {message}", file=sys.stderr)

    # Whatever happens here, this process still meets the others at the end: one that left early
    # would take the whole job down with it (jax.distributed stops every process when one is gone).
    report, failed = None, False
    with stop_on_signals(stop, log, args.early_signals) as received:
        try:
            report = _upsample_here(args, config, group, log, stop)
        except Exception as e:  # noqa: BLE001 - reported, then the job ends together
            failed = True
            log(f"error: {e}" if isinstance(e, PulseJaxError) else f"error: {traceback.format_exc()}")
    from pulse_jax.upsample import finish_job

    merged = finish_job(Path(args.out), group, log)
    code = 2 if failed else 0
    if report is not None:
        code = max(code, _summary(report, args, config, f"process {group.index}/{group.count}: "))
    if merged is not None:
        code = max(code, _summary(merged, args, config, "all processes: "))
    return _stopped_code(received, log) or code


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, say, early: list[int] | None = None):
    """While inside: Ctrl-C (SIGINT) or SIGTERM sets ``stop``, so the search ends at its next chunk of
    steps, waits for the outputs being written, and keeps every finished one; a second signal ends the
    process at once (what is written is whole: every file is renamed into place, and the journal is
    SQLite). ``early``: signals that came before (pulse_jax.launch), taken as having come now.

    Why not Python's KeyboardInterrupt: raised while JAX runs a garbage-collection callback it is only
    printed ("Exception ignored in _xla_gc_callback", jax-ml/jax#18246) and the run goes on to the end;
    and raised in the middle of a compiled program, the interpreter's exit raced XLA's threads (a
    segmentation fault, 3 times in 4). A handler that sets a flag, and a second one that ends the process
    without unwinding it, cannot go wrong so. Yields the signals received.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            stop.set()
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K")  # the progress bar's line: the message takes it
            say(f"{signal.Signals(signum).name}: stopping after the current chunk of steps; finished outputs "
                "are kept (once more to stop at once)")
            return
        say(f"{signal.Signals(signum).name} again: stopping now; finished outputs are kept, the same command again "
            "does the rest")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    for signum in early or ():
        handler(signum, None)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stopped_code(received: list[int], say) -> int:
    """128 + the signal, the shell's convention for a process stopped by it; 0 if none came."""
    if not received:
        return 0
    say("interrupted: finished outputs are kept; the same command again does the rest")
    return 128 + received[0]


def _upsample_here(args, config, group, log, stop) -> dict:
    """This process's part of the work: load, read its share of the inputs, search, write."""
    import numpy as np

    from pulse_jax.images import list_inputs, read_image
    from pulse_jax.inputs import InputOptions
    from pulse_jax.job import UpsampleJob
    from pulse_jax.model import load_model
    from pulse_jax.upsample import upsample_files

    inputs = list_inputs(args.inputs, log)
    model = load_model(args.model)
    mask = None
    if args.mask:
        mask = (read_image(args.mask).mean(axis=-1) > 0.5).astype(np.float32)
    input_options = InputOptions(fit=None if args.align else args.fit, mask=mask,
                                 align=(args.fit or 32) if args.align else None)
    outputs = OutputOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(OutputOptions)})
    start = None
    if args.init_latents is not None:
        from pulse_jax.latents import start_values

        start = start_values(args.init_latents, model, config, args.seeds)
    perceptual = None
    if args.perceptual is not None:
        from pulse_jax.perceptual import load_perceptual

        perceptual = load_perceptual(args.perceptual)
    job = UpsampleJob(model, config, run_options_from_args(args, model.generator), seeds=args.seeds,
                      seed=args.seed, batch_size=args.batch_size, input_options=input_options, output_options=outputs,
                      start=start, perceptual=perceptual)
    return upsample_files(job, inputs, Path(args.out), log=log, show_progress=not args.quiet, processes=group,
                          shard=args.input_shard, stop=stop)


def _summary(report: dict, args, config: PulseConfig, whose: str) -> int:
    from pulse_jax.reports import REPORT_NAME

    this_run = set(report.get("searched", [])) | set(report["skipped"])  # the report also keeps earlier runs'
    entries = [e for e in report["inputs"] if e["input"] in this_run and not e.get("pending")]
    ok = sum(bool(e.get("success")) for e in entries)
    print(f"{whose}{len(entries)} upsampled ({ok} within eps={config.effective_eps:.3g}; "
          f"{len(report['skipped'])} already done), {len(report['failed'])} failed; "
          f"{report.get('seconds', 0.0):.1f}s{'; stopped before the end' if report.get('stopped') else ''}; "
          f"report: {Path(args.out) / REPORT_NAME}")
    if not whose.startswith("process"):  # a process's failures are listed again in the merged report
        _list_failures(report["failed"])
    return 1 if report["failed"] or report.get("stopped") else 0


FAILURES_SHOWN = 20


def _list_failures(failed: list[dict]) -> None:
    for f in failed[:FAILURES_SHOWN]:
        print(f"  failed: {f['error']}", file=sys.stderr)
    if len(failed) > FAILURES_SHOWN:
        print(f"  ... and {len(failed) - FAILURES_SHOWN} more failures: report.json's 'failed' lists them all",
              file=sys.stderr)


def _render(args) -> int:
    """Each file's seeds as <stem>_seed<k>.png; a file of ours through the search's own image program (the
    very images the run wrote, on the same backend)."""
    from pulse_jax import latents
    from pulse_jax.images import save_png_keeping_others
    from pulse_jax.model import load_model

    model = load_model(args.model)
    out = Path(args.out)
    found = []
    for name in args.latents:
        path = Path(name)
        found.append((path, latents.read(path)))
        latents.check_model(found[-1][1], model, path, force=args.force)
    for path, saved in found:
        stem = path.name.removesuffix(".npz").removesuffix(latents.SUFFIX.removesuffix(".npz"))
        for k, image in enumerate(latents.render(model, saved)):
            print(save_png_keeping_others(image, out / f"{stem}_seed{k}.png"))
    return 0


def _evaluate(args) -> int:
    from pulse_jax.evaluate import NAMES, evaluate

    perceptual = None
    if args.perceptual is not None:
        from pulse_jax.perceptual import load_perceptual

        perceptual = load_perceptual(args.perceptual)
    result = evaluate(Path(args.run), Path(args.truth), perceptual)
    summary = result["summary"]
    say = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{summary['inputs']} inputs with a truth: mean PSNR {say(summary['mean_psnr'], '.2f')} dB, mean SSIM "
          f"{say(summary['mean_ssim'], '.4f')}"
          + (f", mean LPIPS {say(summary['mean_lpips'], '.4f')}" if args.perceptual is not None else "")
          + f", mean consistency MSE {say(summary['mean_consistency_mse'], '.3g')}"
          + (f"; {len(summary['without_truth'])} without a truth" if summary["without_truth"] else ""))
    print(f"wrote {Path(args.run) / NAMES[0]} and {Path(args.run) / NAMES[1]}")
    return 0


def _report(args) -> int:
    """Rewrite report.json and index.html from the folder's journals; a one-screen summary."""
    from pulse_jax.upsample import write_folder_report

    out = Path(args.out)
    if not out.is_dir():
        raise PulseJaxError(f"{out} is not a folder: give the --out folder of a pulse-jax upsample run")
    report = write_folder_report(out)
    finished = [e for e in report["inputs"] if not e.get("pending")]
    ok = sum(bool(e.get("success")) for e in finished)
    pending = len(report["inputs"]) - len(finished)
    print(f"{out}: {len(finished)} inputs done ({ok} within eps {report.get('eps', 0):.3g}, {len(finished) - ok} "
          f"not), {pending} unfinished, {len(report['failed'])} failed in the latest runs"
          + (f" ({report['journals']} journals)" if "journals" in report else ""))
    header = report.get("config") or {}
    print(f"latest run: {report.get('architecture')} at {report.get('resolution')} px, {report.get('seeds')} seed(s), "
          f"steps {header.get('steps')}, loss {header.get('loss_str')}, degradation {header.get('degradation')}"
          + ("; it was stopped before the end" if report.get("stopped") else ""))
    _list_failures(report["failed"])
    print(f"wrote {out / 'report.json'} and {out / 'index.html'}")
    return 1 if report["failed"] or pending else 0


def _align(args) -> int:
    from pulse_jax.align import FaceAligner, align_photo
    from pulse_jax.images import list_inputs, save_png_keeping_others
    from pulse_jax.inputs import printable
    from pulse_jax.safe_files import check_writable_folder
    from pulse_jax.upsample import check_out_dir

    photos = list_inputs(args.photos, lambda m: print(m, file=sys.stderr))
    out = Path(args.out)
    check_out_dir(out, photos)  # faces written among the photos would be read as photos, or replace them
    check_writable_folder(out)
    aligner = FaceAligner()
    failed, stems = 0, {}
    for path in photos:
        try:
            if path.stem in stems:  # <stem>_<k>.png would be both photos' faces
                raise PulseJaxError(f"{printable(path)}: its faces would have the names of "
                                    f"{printable(stems[path.stem])}'s (<stem>_<k>.png); rename one")
            stems[path.stem] = path
            faces = align_photo(aligner, path, args.size)
            for k, face in enumerate(faces):
                print(save_png_keeping_others(face, out / f"{path.stem}_{k}.png"))
        except PulseJaxError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _demo(args) -> int:
    from pulse_jax.demo import run_demo

    out = Path(args.out)
    report = run_demo(out, args.model, seeds=args.seeds, lr_size=args.size, steps=args.steps, seed=args.seed,
                      degradation=args.degradation, architecture=args.arch, show_progress=not args.quiet)
    for s in report["seeds"]:
        print(f"seed {s['seed']}: downscaling MSE {s['min_l2']:.2e} "
              f"({'within' if s['success'] else 'above'} eps), best step {s['best_step']}")
    print(f"degradation {report['degradation']}, eps {report['eps']:.3g} ({report['eps_reason']})")
    print(f"search {report['seconds']:.1f}s (compile {report['compile_seconds']:.1f}s); "
          f"sheet: {out / 'sheet.png'}, report: {out / 'report.json'}")
    return 0


def enable_compilation_cache() -> None:
    """Keep compiled searches in the user's cache folder: a warm start skips most of the compile
    (benchmarks/RESULTS.md). JAX_COMPILATION_CACHE_DIR, when set, is used instead."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    jax.config.update("jax_compilation_cache_dir", str(base / "pulse-jax" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None, early_signals: list[int] | None = None) -> int:
    """The command, in this process (``pulse_jax.launch`` first decides how the process runs and records
    the signals that arrive before this is ready: ``early_signals``)."""
    argv = sys.argv[1:] if argv is None else argv
    early = early_signals if early_signals is not None else []
    if argv[:1] != ["upsample"]:  # upsample stops between chunks (stop_on_signals); the others, as Python does
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if early:
            print(f"{signal.Signals(early[0]).name}: stopped before it began", file=sys.stderr)
            return 128 + early[0]
    enable_compilation_cache()
    if argv and argv[0] == "convert":
        from convert.__main__ import main as convert_main

        return convert_main(argv[1:], prog="pulse-jax convert")
    args = build_parser().parse_args(argv)
    args.early_signals = early
    try:
        return {"upsample": _upsample, "align": _align, "demo": _demo, "report": _report,
                "render": _render, "evaluate": _evaluate}[args.command](args)
    except PulseJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m pulse_jax.cli: as the pulse-jax command (jax is imported already here)
    from pulse_jax.launch import main as launch

    sys.exit(launch())
