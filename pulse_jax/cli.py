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
from pathlib import Path

from pulse_jax.config import PRECISIONS, STEP_LOOPS, TRANSPOSED_CONVS, PulseConfig, RunOptions, parse_layers
from pulse_jax.errors import PulseJaxError
from pulse_jax.host_memory import relaunch_with_huge_pages

_HELP = {
    "loss_str": "loss as a sum of WEIGHT*NAME terms (L2, L1, GEOCROSS)",
    "eps": "success threshold on the downscaling MSE; the L2/L1 terms are clamped at it (default: PULSE's 2e-3; "
           "with noise:SIGMA, SIGMA^2, what a perfect image scores against the noisy input)",
    "noise_type": "zero, fixed or trainable noise maps",
    "num_trainable_noise_layers": "with trainable noise: optimise the maps of layers below this",
    "bad_noise_layers": "layers whose noise is zero, e.g. '17' or '16.17' (default: the last layer)",
    "stored_noise": "start the noise maps from the generator's own (kept by NVIDIA's pickles and rosinality's "
                    "checkpoints; NVIDIA's randomize_noise=False) instead of N(0, 1) draws: with --noise-type "
                    "fixed they stay so, with trainable the first maps are optimised from there; bad layers "
                    "stay zero",
    "tile_latent": "search one latent vector for all layers",
    "opt_name": "adam, sgd, sgdm or adamax",
    "learning_rate": "base learning rate",
    "steps": "optimisation steps",
    "lr_schedule": "fixed, linear1cycle or linear1cycledrop",
    "degradation": "how the output must match the input, terms joined by '+': kernel:FILE (a blur kernel, .npy or "
                   "grayscale image), then bicubic (PULSE's), box or gaussian[:SIGMA] downscaling, then "
                   "bayer[:RGGB|BGGR|GRBG|GBRG] (the input is a colour-filter mosaic) or gray (luma only; automatic "
                   "for grayscale inputs), +mask (with --mask), +noise:SIGMA (the input is noisy; sets eps). "
                   "Examples below",
}


PROBLEMS = """problems and their flags (an input at the model's resolution is factor 1: no downscaling):
  super-resolution        (default: bicubic)          pulse-jax upsample faces/ --model M --out runs/
  noisy tiny faces        --degradation bicubic+noise:0.05
  denoising               --degradation noise:0.05     (inputs at the model's resolution)
  deblurring              --degradation kernel:blur.npy   (or kernel:blur.png; +box to downscale too)
  demosaicing             --degradation bayer:RGGB     (a 1-channel mosaic, or RGB: each pixel's filter colour)
  inpainting              --degradation bicubic+mask --mask known.png
  colourisation           --degradation bicubic+gray   (automatic for grayscale inputs)
"""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse turns the error into one line and exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


SEED_LIMIT = 2**63  # jax.random.key takes a signed 64-bit seed


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {value}")
    return value


def layers_arg(text: str):
    try:
        return parse_layers(text)
    except PulseJaxError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_search_options(p: argparse.ArgumentParser) -> None:
    """One flag per PulseConfig field, same defaults; the reference's spellings (-loss_str) work too."""
    for f in dataclasses.fields(PulseConfig):
        names = [f"--{f.name.replace('_', '-')}", f"--{f.name}", f"-{f.name}"]
        help_text = _HELP[f.name] if f.name == "eps" else f"{_HELP[f.name]} (default: {f.default})"
        if f.type in (bool, "bool"):
            p.add_argument(*names, dest=f.name, action="store_true", help=help_text)
        elif f.name == "bad_noise_layers":
            p.add_argument(*names, dest=f.name, type=layers_arg, default=None, help=help_text)
        else:
            kinds = {"int": int, "float": float, "float | None": float}
            kind = kinds.get(f.type, str) if isinstance(f.type, str) else f.type
            p.add_argument(*names, dest=f.name, type=kind, default=f.default, help=help_text)


def config_from_args(args: argparse.Namespace) -> PulseConfig:
    return PulseConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PulseConfig)})


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One flag per RunOptions field (how the search runs; recorded in the report as run_options)."""
    g = p.add_argument_group("how the search runs (RunOptions)")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="generator matmul/conv precision: highest (strict float32), default (TF32 on GPUs, as "
                        "PyTorch's convolutions and so PULSE run there: ~3x faster on an H200), bfloat16 (bf16 "
                        "operands, float32 accumulation; cost in benchmarks/RESULTS.md). Default: default on a "
                        "GPU, highest elsewhere; the report says which ran")
    g.add_argument("--remat", action="store_true",
                   help="recompute each generator block in the backward pass: less memory per seed (more "
                        "seeds fit on a GPU), about one more forward pass of work")
    g.add_argument("--step-loop", choices=STEP_LOOPS,
                   help="device: a chunk of steps in one compiled loop; host: one step per compiled call "
                        "(default: host on a CPU, device elsewhere)")
    g.add_argument("--chunk-steps", type=positive_int, metavar="N",
                   help="steps between progress updates and stop checks (default: a tenth of --steps)")
    g.add_argument("--shard", choices=("auto", "on", "off"), default="auto",
                   help="split each batch over this process's devices: auto (when there are several), on "
                        "(refuse a batch that does not split evenly), off (one device)")
    g.add_argument("--devices", type=positive_int, metavar="K",
                   help="use this process's first K devices (default: all)")
    g.add_argument("--transposed-conv", choices=TRANSPOSED_CONVS, default="phases",
                   help="form of StyleGAN v1's fused upsampling (same numbers; dilated only to compare speed)")


def run_options_from_args(args: argparse.Namespace) -> RunOptions:
    devices = None
    if args.devices is not None:
        import jax

        local = jax.local_devices()
        if not 1 <= args.devices <= len(local):
            raise PulseJaxError(f"--devices {args.devices}: this process has {len(local)} device(s); give 1 to "
                                f"{len(local)}")
        devices = tuple(local[:args.devices])
    return RunOptions(precision=args.precision, remat=args.remat, step_loop=args.step_loop,
                      shard={"auto": None, "on": True, "off": False}[args.shard], devices=devices,
                      chunk_steps=args.chunk_steps, transposed_conv=args.transposed_conv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-jax",
                                description="PULSE photo upsampling on StyleGAN v1 and StyleGAN2, in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("convert", help="convert PULSE's synthesis.pt / mapping.pt, or a network file (NVIDIA's "
                                   "pickles of StyleGAN and StyleGAN2, rosinality's .pt), into a model directory",
                   add_help=False)

    up = sub.add_parser("upsample", help="upsample low-resolution images (files or folders)",
                        epilog=PROBLEMS, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("inputs", nargs="+", help="image files or folders of images (square, side dividing R)")
    up.add_argument("--model", required=True, help="model directory from pulse-jax convert")
    up.add_argument("--out", required=True, help="output folder")
    up.add_argument("--seeds", type=positive_int, default=1,
                    help="results searched per input (the reference's -duplicates)")
    up.add_argument("--seed", type=seed_int, default=0, help="random seed")
    up.add_argument("--batch-size", type=positive_int,
                    help="inputs searched together (x seeds each). Default: on a CPU 1 (or one per device when "
                         "--seeds does not split evenly over them); on a GPU or TPU enough for about 32 "
                         "inputs x seeds per device (throughput grows up to there); halved when it does not fit")
    up.add_argument("--all-seeds", action="store_true", help="also write every seed's image")
    up.add_argument("--save-intermediate", action="store_true", help="write the search as an animated GIF")
    add_run_options(up)
    up.add_argument("--fit", type=positive_int, metavar="SIZE",
                    help="centre-crop each input to a square and resize it to SIZE (bicubic) instead of refusing "
                         "sizes that are not square or do not divide the resolution")
    up.add_argument("--mask", help="with --degradation ...+mask: an image the inputs' size, white where the "
                                   "input is known (the loss ignores the rest: inpainting)")
    up.add_argument("--align", action="store_true",
                    help="inputs are photos: find and align every face (dlib, FFHQ crop), then upsample them; "
                         "faces are downscaled to --fit (default 32)")
    up.add_argument("--overwrite", action="store_true",
                    help="redo inputs already done and replace outputs made with other settings")
    up.add_argument("--quiet", action="store_true", help="no progress bar")
    dist = up.add_argument_group("several processes (hosts, or one per GPU): run the same command in each; "
                                 "each searches its share of the inputs into the shared --out folder")
    dist.add_argument("--distributed", action="store_true",
                      help="join a job of several processes, found from Slurm, Open MPI or Cloud TPU, or from "
                           "the three options below")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (implies --distributed)")
    dist.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the job")
    dist.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    add_search_options(up)

    al = sub.add_parser("align", help="find and align the faces in photos, as PULSE's reference does")
    al.add_argument("photos", nargs="+", help="photo files or folders")
    al.add_argument("--out", required=True, help="output folder: <stem>_<k>.png per face")
    al.add_argument("--size", type=positive_int, default=32, help="output side, dividing 1024 (default 32)")

    demo = sub.add_parser("demo", help="ground truth -> low resolution -> search, written as a sheet")
    demo.add_argument("--model", help="model directory (default: a small random-weight generator)")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--seeds", type=positive_int, default=4)
    demo.add_argument("--size", type=positive_int, default=8, help="low-resolution side (default 8)")
    demo.add_argument("--steps", type=positive_int, default=200,
                      help="search steps (default 200: the random demo generator converges slower than FFHQ)")
    demo.add_argument("--seed", type=seed_int, default=0)
    demo.add_argument("--arch", choices=("stylegan1", "stylegan2"), default="stylegan1",
                      help="the random generator's architecture when no --model is given (default stylegan1)")
    demo.add_argument("--degradation", default="bicubic", metavar="SPEC",
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

        with stop_on_signals(stop, say) as received:
            report = _upsample_here(args, config, ProcessGroup(), say, stop)
        code = _summary(report, args, config, "")
        return _stopped_code(received, say) or code
    group = initialize(args.coordinator, args.num_processes, args.process_id)
    tag = f"[process {group.index}/{group.count}]"

    def log(message):
        print(f"{tag} {message}", file=sys.stderr)

    # Whatever happens here, this process still meets the others at the end: one that left early
    # would take the whole job down with it (jax.distributed stops every process when one is gone).
    report, failed = None, False
    with stop_on_signals(stop, log) as received:
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
def stop_on_signals(stop: threading.Event, say):
    """While inside: Ctrl-C (SIGINT) or SIGTERM sets ``stop``, so the search ends at its next chunk of
    steps with every finished output and the report written; a second signal stops at once.

    Why not Python's KeyboardInterrupt: raised while JAX runs a garbage-collection callback it is only
    printed ("Exception ignored in _xla_gc_callback", jax-ml/jax#18246) and the run goes on to the end.
    A handler that only sets a flag cannot be lost that way. Yields the signals received.
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
        for s in previous:
            signal.signal(s, signal.SIG_DFL)  # a third one ends the process whatever it is doing
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
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
    from pulse_jax.model import load_model
    from pulse_jax.upsample import OutputOptions, upsample_files

    options = run_options_from_args(args)
    inputs = list_inputs(args.inputs, log)
    model = load_model(args.model)
    mask = None
    if args.mask:
        mask = (read_image(args.mask).mean(axis=-1) > 0.5).astype(np.float32)
    input_options = InputOptions(fit=None if args.align else args.fit, mask=mask,
                                 align=(args.fit or 32) if args.align else None)
    outputs = OutputOptions(all_seeds=args.all_seeds, save_intermediate=args.save_intermediate,
                            overwrite=args.overwrite)
    return upsample_files(model, inputs, Path(args.out), config, options, seeds=args.seeds, seed=args.seed,
                          batch_size=args.batch_size, outputs=outputs, input_options=input_options, log=log,
                          show_progress=not args.quiet, processes=group, stop=stop)


def _summary(report: dict, args, config: PulseConfig, whose: str) -> int:
    from pulse_jax.reports import REPORT_NAME

    this_run = set(report.get("searched", [])) | set(report["skipped"])  # the report also keeps earlier runs'
    entries = [e for e in report["inputs"] if e["input"] in this_run and not e.get("pending")]
    ok = sum(e["success"] for e in entries)
    print(f"{whose}{len(entries)} upsampled ({ok} within eps={config.effective_eps:.3g}; "
          f"{len(report['skipped'])} already done), {len(report['failed'])} failed; "
          f"{report.get('seconds', 0.0):.1f}s{'; stopped before the end' if report.get('stopped') else ''}; "
          f"report: {Path(args.out) / REPORT_NAME}")
    if not whose.startswith("process"):  # a process's failures are listed again in the merged report
        for f in report["failed"]:
            print(f"  failed: {f['error']}", file=sys.stderr)
    return 1 if report["failed"] or report.get("stopped") else 0


def _align(args) -> int:
    from pulse_jax.align import FaceAligner, align_photo
    from pulse_jax.images import list_inputs, save_png

    aligner = FaceAligner()
    failed = 0
    for path in list_inputs(args.photos, lambda m: print(m, file=sys.stderr)):
        try:
            faces = align_photo(aligner, path, args.size)
        except PulseJaxError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        for k, face in enumerate(faces):
            print(save_png(face, Path(args.out) / f"{path.stem}_{k}.png"))
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
    (measured at 1024 px: 9 s cold, 2.6 s warm on a 2-core CPU; 12.6 s / 2.9 s on an H200).
    JAX_COMPILATION_CACHE_DIR, when set, is used instead."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    jax.config.update("jax_compilation_cache_dir", str(base / "pulse-jax" / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] in (["upsample"], ["demo"]):
        relaunch_with_huge_pages()  # 20-25% faster CPU search steps at 1024 px (host_memory.py)
    argv = sys.argv[1:] if argv is None else argv
    enable_compilation_cache()
    if argv and argv[0] == "convert":
        from convert.__main__ import main as convert_main

        return convert_main(argv[1:], prog="pulse-jax convert")
    args = build_parser().parse_args(argv)
    try:
        return {"upsample": _upsample, "align": _align, "demo": _demo}[args.command](args)
    except PulseJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
