"""`consortium pretrain`: the public start, the task's model trained centrally on the public stand-in cohort."""

from __future__ import annotations

from pathlib import Path

from consortium.argtypes import positive_int


def cmd_pretrain(args) -> int:
    from consortium.public_start import pretrain

    pretrain(task_name=args.task, cohort_dir=Path(args.cohort), out=Path(args.out), epochs=args.epochs, lr=args.lr,
             batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    return 0


def add_pretrain(sub) -> None:
    pre = sub.add_parser("pretrain", help="the public start: train the task's model on the public stand-in cohort")
    pre.add_argument("--task", default="seg2d", help="the task whose model to pretrain")
    pre.add_argument("--cohort", default="public_cohort", help="folder of the public archives' profiles")
    pre.add_argument("--out", default="runs/public_start/seg2d.pt", help="where to write the state dict (+ .json)")
    pre.add_argument("--epochs", type=positive_int, default=20, help="passes over the pooled public cohort")
    pre.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine schedule)")
    pre.add_argument("--batch-size", type=positive_int, default=16)
    pre.add_argument("--seed", type=int, default=0, help="model initialisation and data order")
    pre.set_defaults(fn=cmd_pretrain)
