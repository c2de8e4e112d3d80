"""Run machinery of ssal.py, kept out of the file that shows the algorithm: the training log, atomic writes, RNG
states, checkpoints and resume, --weights files, the round-0 cache, signals and `Stop`, and the checks of the
flags' values, the device and the output folder. Nothing here changes what a run computes; it saves, restores and reports it.

    <out>/<name>.json            the result (atomic_save, as JSON)
    <out>/<name>.log.jsonl       the training log (RunLog)
    <out>/ckpt/<name>.pt         the whole run state while it runs (Checkpointer, load_checkpoint)
    <out>/round0/<key>.pt        round 0's model, shared by every selector (round0_path, load_round0, save_round0)
    --weights FILE               a local state dict to start from (weights_file, load_weights)
"""
import contextlib
import glob
import hashlib
import json
import math
import os
import random
import signal
import sys
import tempfile
import time

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

import data as D
import fa


# ----------------------------------------------------------------------------------------------------------------
# the log and atomic writes

class RunLog:
    """The training log <out>/<name>.log.jsonl: one JSON object a line, flushed at once (`tail -f` works).

    {"event": "start", ...}                                   one per launch: name, rounds, iters, intervals
    {"round": r, "iter": i, "lr": .., "L_l": .., ...}         every --log-every iterations: loss parts and mask
                                                             ratio averaged since the previous line; lr and
                                                             thresholds (tau, tau_min) as they are at iteration i
    {"round": r, "iter": i, "test_acc": a, "probe": {..}}     every --eval-every iterations and at the last one;
                                                             probe: diagnostics.py's measures (with --probe)
    {"event": "resume" | "reused", ...}                       a resumed run; a round 0 taken from round0/
    round r: the training's index, 0 .. R-1 for the query rounds and R (= --rounds) for the final training.
    """

    def __init__(self, path, offset=None):
        """A new log, or with `offset` the log of a resumed run, cut back to where its checkpoint was written (the
        lines of the iterations after it are written again)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if offset is None or not os.path.isfile(path):
            self.f = open(path, "w")
        else:
            self.f = open(path, "r+")
            self.f.truncate(offset)
            self.f.seek(offset)

    def write(self, **rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()

    def tell(self):
        return self.f.tell()

    def close(self):
        self.f.close()


def atomic_save(obj, path, as_json=False):
    """Write to a temporary file, then rename: a reader sees the old file or the new one, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if as_json:
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=1)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_flags(args, error):
    """Every value a flag of ssal.py can take wrongly, as one line through `error` (the parser's: exit 2) before any
    work starts."""
    def need(ok, msg):
        if not ok:
            error(msg)

    flag = lambda k: "--" + k.replace("_", "-")  # noqa: E731
    for k in ("iters", "batch_size", "uratio", "rounds", "queue_len", "budget", "eval_every", "log_every",
              "ckpt_every"):
        need(getattr(args, k) >= 1, f"{flag(k)} must be at least 1, not {getattr(args, k)}")
    need(args.warmup >= 0, f"--warmup must be at least 0, not {args.warmup}")
    need(args.probe >= 0, f"--probe must be at least 0 (0: off), not {args.probe}")
    need(args.val_size >= 0, f"--val-size must be at least 0 (0: none), not {args.val_size}")
    need(args.noise_subset >= 0, f"--noise-subset must be at least 0 (0: the whole pool), not {args.noise_subset}")
    need(args.fa_warmup >= 0, f"--fa-warmup must be at least 0 iterations, not {args.fa_warmup}")
    for k, (default, _) in fa.READINGS.items():  # a reading of FA without FA is a mistake, not a no-op
        need(args.fa or getattr(args, k) == default, f"{flag(k)} {getattr(args, k)} is a reading of FA: add --fa")
    need(args.seed >= 0, f"--seed must be at least 0, not {args.seed}")
    need(args.workers >= -1, f"--workers must be -1 (automatic) or at least 0, not {args.workers}")
    need(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a finite number above 0, not {args.lr}")
    for k in ("weight_decay", "lambda_s", "lambda_c", "lambda_u", "ent_loss_ratio"):
        v = getattr(args, k)
        need(math.isfinite(v) and v >= 0, f"{flag(k)} must be a finite number of at least 0, not {v}")
    need(args.layer_decay is None or 0 < args.layer_decay <= 1, f"--layer-decay must be in (0, 1], not {args.layer_decay}")
    need(0 < args.p_cutoff <= 1, f"--p-cutoff must be in (0, 1], not {args.p_cutoff}")
    need(0 <= args.ema_p < 1, f"--ema-p must be in [0, 1), not {args.ema_p}")
    C = D.DATASETS[args.dataset][0]
    need(args.budget % C == 0, f"--budget {args.budget} must be a positive multiple of the {C} classes "
                               f"(the initial set takes budget / classes images per class)")
    need(not (args.fa and args.ssl == "supervised"), "--fa needs unlabeled data: use it with --ssl fixmatch or freematch")
    need(args.name is None or (args.name.strip(". ") and not set(args.name) & {"/", "\\", os.sep}),
         f"--name {args.name!r} must be a file name, without folders")


def check_device_and_out(args):
    """--device must name a device that exists here and --out a folder that can be created and written to.
    Raises DataError (one line, exit 2)."""
    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise D.DataError(f"--device {args.device!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise D.DataError(f"--device {args.device}: no CUDA GPU is visible here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise D.DataError(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise D.DataError(f"--device {args.device}: MPS is not available here (use --device cpu)")
    elif dev.type != "cpu":
        raise D.DataError(f"--device {args.device}: only cpu, cuda and mps devices are supported")
    try:
        os.makedirs(args.out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=args.out):
            pass
    except OSError as e:
        raise D.DataError(f"--out {args.out} can not be created or written to ({e.strerror}); choose another "
                          f"folder") from None


class LogWindow:
    """What a log line averages: the loss terms summed since the previous line (as tensors: no device sync per
    iteration) and the seconds per iteration this process spent in that window, evaluations left out."""

    def __init__(self, sums=None, n=0):
        self.sums, self.n = dict(sums or {}), n  # resumed mid-window: the sums of the checkpoint
        self.n_timed, self.t0, self.t_out = 0, time.time(), 0.0

    def add(self, terms):
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1
        self.n_timed += 1

    def leave_out(self, seconds):
        self.t_out += seconds

    def flush(self):
        """The window's averages and seconds per iteration; starts the next window."""
        rec = {k: float(v) / self.n for k, v in self.sums.items()}
        sec = (time.time() - self.t0 - self.t_out) / self.n_timed
        self.__init__()
        return rec, sec

    def state_dict(self):
        return {"win": self.sums, "n_win": self.n}


# ----------------------------------------------------------------------------------------------------------------
# stops and RNG states

class Stop(Exception):
    """Ends a run with one line on stderr and an exit code: 3 when the loss diverged, 143 after a SIGTERM or SIGUSR1
    (the run was checkpointed first: the same command resumes it). No result file is written."""

    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code


STOP = {"signal": None}  # set by the signal handler; training checkpoints and stops at the end of its iteration


def _on_signal(signum, frame):
    STOP["signal"] = signum


@contextlib.contextmanager
def stop_on_signals():
    """While the block runs, SIGTERM and SIGUSR1 (what Slurm sends) only set STOP["signal"]: the training loop
    checkpoints and raises Stop at the end of its iteration. The previous handlers come back afterwards."""
    STOP["signal"] = None
    sigs = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s is not None]
    old = {s: signal.signal(s, _on_signal) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def diverged(args, rnd, n, terms, ck=None):
    """The Stop (exit 3) of a training whose loss at iteration n is not finite: no step was taken, and the last
    checkpoint stays."""
    kept = f"; the last checkpoint stays in {ck.path}" if ck and os.path.isfile(ck.path) else ""
    return Stop(f"training diverged: non-finite loss at {training_name(rnd, args)}, iteration {n} ("
                + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                + f"): lower --lr and start over with --no-resume{kept}", code=3)


def rng_states():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_states(s):
    torch.set_rng_state(s["torch"].cpu())
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s["cuda"] is not None and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])


# ----------------------------------------------------------------------------------------------------------------
# checkpoints and resume

# flags that do not change a run's result: everything else must match for a checkpoint to be resumed
RUN_CONTROL = ("device", "workers", "out", "name", "reuse", "skip_existing", "resume", "data_dir", "download",
               "log_every", "ckpt_every", "save_features")


def result_flags(args):
    return {k: v for k, v in vars(args).items() if k not in RUN_CONTROL}


def training_name(rnd, args):
    return "the final training" if rnd == args.rounds else f"round {rnd}"


def checkpoint_path(args):
    return os.path.join(args.out, "ckpt", f"{args.name}.pt")


class Checkpointer:
    """<out>/ckpt/<name>.pt, written atomically: the run so far (the result records of the finished rounds, the
    labeled set, the training's index `rnd`, where the log ends) and `train`: the state of the training under way
    (training_state()), or {"done": True, model, record, rng} once it has ended and its selection is pending, or
    None when training `rnd` has not started. Deleted by remove() once the result file is written."""

    def __init__(self, args, res, labeled, log):
        self.path = checkpoint_path(args)
        self.args, self.res, self.labeled, self.log = args, res, labeled, log

    def save(self, rnd, train=None):
        atomic_save({"flags": result_flags(self.args), "rnd": rnd, "res": self.res, "labeled": self.labeled,
                     "log_offset": self.log.tell(), "train": train}, self.path)

    def stopped(self, rnd, n):
        return (f"stopped by signal {STOP['signal']} at {training_name(rnd, self.args)}, iteration {n}; saved "
                f"{self.path}: run the same command to resume")

    def remove(self):
        """The checkpoint, a temporary file a kill left half-written, and ckpt/ once it is empty."""
        for f in glob.glob(glob.escape(self.path) + "*"):
            os.remove(f)
        folder = os.path.dirname(self.path)
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)


def load_checkpoint(path, args):
    """The saved run, or None (none, or unreadable: one warning). Flags that change the result must match."""
    if not os.path.isfile(path):
        return None
    try:
        ck = torch.load(path, map_location=args.device, weights_only=False)
        assert {"flags", "rnd", "res", "labeled", "log_offset", "train"} <= set(ck), "keys missing"
    except Exception as e:  # a cut-short or foreign file
        print(f"warning: checkpoint {path} is unreadable ({type(e).__name__}: {str(e)[:80]}); starting the run over",
              file=sys.stderr)
        return None
    now = result_flags(args)
    diff = [k for k in sorted(set(now) | set(ck["flags"])) if now.get(k) != ck["flags"].get(k)]
    if diff:
        d = ", ".join(f"--{k.replace('_', '-')} {ck['flags'].get(k)} -> {now.get(k)}" for k in diff[:4])
        raise D.DataError(f"checkpoint {path} was written with other flags ({d}): rerun with its flags to resume "
                          f"it, or pass --no-resume to start over")
    return ck


def open_run(args, saved, labeled):
    """The run's result record, labeled set, next training, that training's saved state and the log: new (from the
    initial labeled set `labeled`), or from `saved`, the checkpoint of a stopped run, with the log cut back to it."""
    rnd0, state, res = 0, None, {"config": vars(args).copy(), "rounds": []}
    if saved:
        res, labeled, rnd0, state = saved["res"], np.asarray(saved["labeled"]), saved["rnd"], saved["train"]
        where = "selection" if state and state.get("done") else f"iteration {state['loop']['n'] if state else 0}"
        print(f"resuming {args.name}: {training_name(rnd0, args)}, {where}")
    log = RunLog(os.path.join(args.out, f"{args.name}.log.jsonl"), offset=saved["log_offset"] if saved else None)
    log.write(event="resume" if saved else "start", name=args.name, rounds=args.rounds, iters=args.iters,
              eval_every=args.eval_every, log_every=args.log_every, time=time.strftime("%Y-%m-%d %H:%M:%S"))
    return res, labeled, rnd0, state, log


def training_state(tr, loop):
    """Everything needed to continue a training exactly from here: tr is ssal.setup_training()'s namespace (model,
    opt, sched, scaler, algo, queues), loop the training loop's own counters and sums."""
    return {"model": tr.model.state_dict(), "opt": tr.opt.state_dict(), "sched": tr.sched.state_dict(),
            "scaler": tr.scaler.state_dict(), "ssl": tr.algo.state_dict(),
            "queues": tr.queues.state_dict() if tr.queues else None, "loop": loop, "rng": rng_states()}


def restore_training(tr, state):
    """The inverse of training_state(): loads the modules in place and returns the loop's counters."""
    tr.model.load_state_dict(state["model"])
    tr.opt.load_state_dict(state["opt"])
    tr.sched.load_state_dict(state["sched"])
    tr.scaler.load_state_dict(state["scaler"])
    tr.algo.load_state_dict(state["ssl"])
    if tr.queues:
        tr.queues.load_state_dict(state["queues"])
    set_rng_states(state["rng"])
    return state["loop"]


# ----------------------------------------------------------------------------------------------------------------
# --weights files

HERE = os.path.dirname(os.path.abspath(__file__))


def weights_file(path):
    """--weights as given, or, when it is relative and missing here, the same path in this file's folder (so that
    the digits preset works from any working folder)."""
    alt = os.path.join(HERE, path)
    return alt if not os.path.isfile(path) and not os.path.isabs(path) and os.path.isfile(alt) else path


def load_weights(model, path):
    """Load a local state dict into `model`: unwrap {'model'|'state_dict': ...}, strip 'module.' / 'backbone.'
    prefixes, drop the classifier head, and let timm adapt a ViT (pos_embed resized to the model's token grid,
    patch embedding resampled to its patch size). Prints missing / unexpected keys in one line."""
    if not os.path.isfile(path):
        raise D.DataError(f"--weights file not found: {path} (for CIFAR-100 get USB's "
                          f"vit_small_patch2_32_mlp_im_1k_32.pth from the Semi-supervised-learning releases)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise D.DataError(f"--weights {path} is not a PyTorch checkpoint that loads ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None
    for key in ("model", "state_dict", "ema_model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise D.DataError(f"--weights {path} holds no state dict (a dict of tensors, or one under 'model' / "
                          f"'state_dict')")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    head = model.get_classifier()
    head_keys = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    state = {k: v for k, v in state.items() if k not in head_keys and not k.startswith("head.")}
    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)
        state = {k: v for k, v in state.items() if k not in head_keys}
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    state = {k: v for k, v in state.items() if k not in wrong}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if len(state) == len(unexpected):  # a wrong file must not silently train from scratch
        raise D.DataError(f"--weights {path} shares no tensor with --model (of its {len(state) + len(wrong)} "
                          f"tensors, {len(wrong)} have the model's names but other shapes): is it for this model?")
    print(f"loaded {path}: {len(state) - len(unexpected)} tensors; missing {list(missing)}; unexpected "
          f"{list(unexpected)}" + (f"; other shapes, skipped {wrong}" if wrong else ""))
    return model


# ----------------------------------------------------------------------------------------------------------------
# round-0 reuse

ROUND0_FLAGS = ("dataset", "budget", "seed", "ssl", "fa", "lambda_s", "lambda_c", "queue_len", "p_cutoff", "ema_p",
                "ent_loss_ratio", "lambda_u", "model", "pretrained", "weights", "iters", "batch_size", "uratio",
                "lr", "weight_decay", "layer_decay", "warmup", "amp", "eval_every", "probe",  # eval_every, probe: its curves
                "ls_samples", "lc_norm", "lc_views", "fa_warmup",  # not fa_trainings: round 0 has FA in both
                "val_size")


def round0_path(args):
    """Round 0 trains on the seeded initial set whatever --al is: key its checkpoint by every flag it reads and by
    the content of the --weights file, not only its name, so that a regenerated file never reuses old rounds."""
    key = {k: getattr(args, k) for k in ROUND0_FLAGS}
    if args.weights:
        with open(weights_file(args.weights), "rb") as f:
            key["weights_sha1"] = hashlib.sha1(f.read()).hexdigest()
    if not args.fa:  # FA weights and readings do not matter without --fa
        for k in ("lambda_s", "lambda_c", "queue_len", "ls_samples", "lc_norm", "lc_views", "fa_warmup"):
            key.pop(k)
    h = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(args.out, "round0", f"{args.dataset}-b{args.budget}-{args.ssl}{'-fa' if args.fa else ''}"
                                            f"-s{args.seed}-{h}.pt")


def load_round0(path, model):
    """Round 0's saved record, with its weights loaded into `model`; None when there is no file, or when it is
    unreadable (named in one warning: round 0 is trained again)."""
    if not os.path.isfile(path):
        return None
    try:
        cached = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
        model.load_state_dict(cached["model"])
        return cached["record"]
    except Exception as e:
        print(f"warning: round-0 checkpoint {path} is unreadable ({type(e).__name__}); training round 0 again",
              file=sys.stderr)
        return None


def save_round0(path, tr, rec, args):
    atomic_save({"model": tr.model.state_dict(), "ssl": tr.algo.state_dict(), "record": rec,
                 "queues": tr.queues.state_dict() if tr.queues else None,
                 "config": {k: getattr(args, k) for k in ROUND0_FLAGS}}, path)


def exit_on_errors(main):
    """Run the command line `main`: a DataError (a mistake the user can fix) ends in one line on stderr and exit
    code 2, a Stop in its line and code (3: diverged; 143: stopped by a signal, checkpointed); no traceback."""
    try:
        main()
    except D.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stop as e:
        print(f"{'error' if e.code == 3 else 'stopped'}: {e}", file=sys.stderr)
        sys.exit(e.code)
