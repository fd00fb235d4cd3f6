"""Benchmark: esfsm's in-memory engine against the ``eventsourcing`` library.

Both sides run the very same bank-account workload, in memory:

1. open ``--accounts`` accounts (owner, initial balance 1000);
2. apply ``--ops`` seeded deposits and withdrawals to random accounts. Amounts
   are small, so withdrawals mostly succeed, but every ``FAILING_EVERY``-th
   operation is a withdrawal far larger than any balance and must be rejected
   for insufficient funds.

* esfsm: ``definitions/bankaccount.yaml`` compiled by ``load_project`` and run
  by ``MemoryEngine.handle``.
* eventsourcing (9.x): a hand-written ``BankAccount(Aggregate)`` with ``@event``
  methods and a ``Bank(Application)`` whose commands do repository get → method
  → save, on the default POPO (plain Python objects) persistence.

Each side's figure is the median commands/s over ``--repeat`` runs. Every run
uses a fresh engine / application and times only the command loop (opens
included); the two sides are interleaved, alternating which goes first, so
machine noise hits both alike. Accepted / rejected counts and a sample of final
balances are checked against a plain-Python reference model; any disagreement
exits non-zero. The last line printed is ``ratio: X.XX`` (esfsm ÷ eventsourcing).

Usage (from anywhere; paths are resolved from this file)::

    python benchmarks/bench_engine.py [--accounts 1000] [--ops 20000] [--repeat 3]
                                      [--seed 42] [--clock wall|cpu] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from uuid import UUID

# Make the repository importable when the script is run without installing esfsm.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402
from eventsourcing.popo import POPOApplicationRecorder  # noqa: E402

from esfsm.engine import MemoryEngine  # noqa: E402
from esfsm.project import load_project  # noqa: E402

DEFINITION = REPO_ROOT / "definitions" / "bankaccount.yaml"
AGGREGATE = "bankaccount"
INITIAL_BALANCE = 1000
MAX_AMOUNT = 100  # deposits / withdrawals are 1..MAX_AMOUNT
FAILING_EVERY = 500  # every Nth op is a withdrawal no account can cover
HUGE_AMOUNT = 10**9
INSUFFICIENT_FUNDS = 422  # esfsm's rejection code for a failed `rules` check
BALANCE_SAMPLE = 100  # accounts whose final balance is compared across sides


# -- the workload --------------------------------------------------------------

OpKind = Literal["deposit", "withdraw"]


@dataclass(frozen=True, slots=True)
class Op:
    """One deposit or withdrawal against the account at ``index``."""

    kind: OpKind
    index: int
    amount: int


@dataclass(frozen=True)
class Workload:
    """Account keys and owners, and the seeded sequence of money movements."""

    keys: tuple[str, ...]
    owners: tuple[str, ...]
    ops: tuple[Op, ...]

    @property
    def commands(self) -> int:
        return len(self.keys) + len(self.ops)


def make_workload(accounts: int, ops: int, seed: int) -> Workload:
    """A deterministic workload: the same seed always gives the same commands."""
    rng = random.Random(seed)
    keys = tuple(f"acc-{i}" for i in range(accounts))
    owners = tuple(f"owner{i}" for i in range(accounts))
    sequence: list[Op] = []
    for n in range(1, ops + 1):
        index = rng.randrange(accounts)
        if n % FAILING_EVERY == 0:
            sequence.append(Op("withdraw", index, HUGE_AMOUNT))
        else:
            kind: OpKind = "deposit" if rng.random() < 0.5 else "withdraw"
            sequence.append(Op(kind, index, rng.randint(1, MAX_AMOUNT)))
    return Workload(keys, owners, tuple(sequence))


@dataclass(frozen=True)
class Expected:
    """What a correct implementation must report: counts and final balances."""

    accepted: int
    rejected: int
    balances: tuple[int, ...]


def reference(workload: Workload) -> Expected:
    """Run the workload on plain integers: the ground truth for both sides."""
    balances = [INITIAL_BALANCE] * len(workload.keys)
    accepted, rejected = len(workload.keys), 0  # every open succeeds
    for op in workload.ops:
        if op.kind == "withdraw" and op.amount > balances[op.index]:
            rejected += 1
            continue
        balances[op.index] += op.amount if op.kind == "deposit" else -op.amount
        accepted += 1
    return Expected(accepted, rejected, tuple(balances))


# -- the runs --------------------------------------------------------------------


@dataclass
class RunResult:
    """One timed run: how long the command loop took and what it decided."""

    seconds: float
    accepted: int
    rejected: int
    balance_of: Callable[[int], int]  # account index → final balance, read after timing


# Wall-clock time by default; `--clock cpu` counts only this process's CPU time,
# which is steadier on a busy machine (the workload is single-threaded).
Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(loop: Callable[[], tuple[int, int]], clock: Clock) -> tuple[float, int, int]:
    """Run loop with a clean heap; return (seconds, accepted, rejected)."""
    gc.collect()
    start = clock()
    accepted, rejected = loop()
    return clock() - start, accepted, rejected


def esfsm_engine() -> MemoryEngine:
    """A fresh in-memory engine for the bank-account definition."""
    project = load_project([DEFINITION])
    return MemoryEngine(project.aggregates.values())


def esfsm_loop(engine: MemoryEngine, workload: Workload) -> tuple[int, int]:
    """Every command of the workload through MemoryEngine.handle; (accepted, rejected)."""
    handle = engine.handle
    headers = [{"x-username": owner} for owner in workload.owners]
    accepted = rejected = 0
    for key, owner, meta in zip(workload.keys, workload.owners, headers, strict=True):
        decision = handle(AGGREGATE, "open_account", key, {"owner": owner, "initial_balance": INITIAL_BALANCE}, meta)
        if not decision.accepted:
            raise AssertionError(f"esfsm rejected open_account {key}: {decision.message}")
        accepted += 1
    keys = workload.keys
    for op in workload.ops:
        decision = handle(AGGREGATE, op.kind, keys[op.index], {"amount": op.amount}, headers[op.index])
        if decision.accepted:
            accepted += 1
        elif decision.code == INSUFFICIENT_FUNDS:
            rejected += 1
        else:
            raise AssertionError(f"esfsm rejected {op} with {decision.code}: {decision.message}")
    return accepted, rejected


def run_esfsm(workload: Workload, clock: Clock) -> RunResult:
    engine = esfsm_engine()
    seconds, accepted, rejected = timed(lambda: esfsm_loop(engine, workload), clock)

    def balance_of(index: int) -> int:
        return int(engine.state(AGGREGATE, workload.keys[index]).data["balance"])

    return RunResult(seconds, accepted, rejected, balance_of)


class InsufficientFundsError(Exception):
    """A withdrawal larger than the balance."""


class BankAccount(Aggregate):
    """The eventsourcing twin of bankaccount.yaml's open / deposit / withdraw."""

    @event("AccountOpened")
    def __init__(self, owner: str, balance: int) -> None:
        self.owner = owner
        self.balance = balance

    @event("FundsDeposited")
    def deposit(self, amount: int) -> None:
        self.balance += amount

    def withdraw(self, amount: int) -> None:
        # Check first, then trigger the event: a rejected withdrawal records nothing.
        if amount > self.balance:
            raise InsufficientFundsError(f"insufficient funds: {self.balance} < {amount}")
        self._withdrawn(amount)

    @event("FundsWithdrawn")
    def _withdrawn(self, amount: int) -> None:
        self.balance -= amount


class Bank(Application):
    """Commands as in the eventsourcing docs: get the aggregate, call it, save it."""

    def open_account(self, owner: str, initial_balance: int) -> UUID:
        # The same input rules as the YAML definition, so both sides do comparable work.
        if not owner or initial_balance < 100:
            raise ValueError("accounts must be opened by an owner with at least 100")
        account = BankAccount(owner, initial_balance)
        self.save(account)
        return account.id

    def deposit(self, account_id: UUID, amount: int) -> None:
        if amount < 1:
            raise ValueError("amount must be at least 1")
        account: BankAccount = self.repository.get(account_id)
        account.deposit(amount)
        self.save(account)

    def withdraw(self, account_id: UUID, amount: int) -> None:
        if amount < 1:
            raise ValueError("amount must be at least 1")
        account: BankAccount = self.repository.get(account_id)
        account.withdraw(amount)
        self.save(account)

    def balance(self, account_id: UUID) -> int:
        account: BankAccount = self.repository.get(account_id)
        return account.balance


def new_bank() -> Bank:
    """A fresh application on in-memory POPO persistence (the library's default)."""
    bank = Bank(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    if not isinstance(bank.recorder, POPOApplicationRecorder):
        raise AssertionError(f"expected POPO persistence, got {type(bank.recorder).__name__}")
    return bank


def eventsourcing_loop(bank: Bank, ids: dict[str, UUID], workload: Workload) -> tuple[int, int]:
    """Every command of the workload through the Bank application; (accepted, rejected)."""
    accepted = rejected = 0
    for key, owner in zip(workload.keys, workload.owners, strict=True):
        ids[key] = bank.open_account(owner, INITIAL_BALANCE)
        accepted += 1
    keys = workload.keys
    for op in workload.ops:
        account_id = ids[keys[op.index]]
        if op.kind == "deposit":
            bank.deposit(account_id, op.amount)
            accepted += 1
        else:
            try:
                bank.withdraw(account_id, op.amount)
            except InsufficientFundsError:
                rejected += 1
            else:
                accepted += 1
    return accepted, rejected


def run_eventsourcing(workload: Workload, clock: Clock) -> RunResult:
    bank = new_bank()
    ids: dict[str, UUID] = {}
    seconds, accepted, rejected = timed(lambda: eventsourcing_loop(bank, ids, workload), clock)

    def balance_of(index: int) -> int:
        return bank.balance(ids[workload.keys[index]])

    return RunResult(seconds, accepted, rejected, balance_of)


# -- checks, profile and report ----------------------------------------------------


def verify(workload: Workload, expected: Expected, results: dict[str, RunResult], seed: int) -> list[str]:
    """Problems found: counts or sampled balances that differ from the reference."""
    problems = []
    for side, result in results.items():
        if (result.accepted, result.rejected) != (expected.accepted, expected.rejected):
            problems.append(
                f"{side}: accepted/rejected {result.accepted}/{result.rejected}, "
                f"expected {expected.accepted}/{expected.rejected}"
            )
    rng = random.Random(seed + 1)
    sample = rng.sample(range(len(workload.keys)), min(BALANCE_SAMPLE, len(workload.keys)))
    for index in sorted(sample):
        balances = {side: result.balance_of(index) for side, result in results.items()}
        if any(b != expected.balances[index] for b in balances.values()):
            problems.append(f"{workload.keys[index]}: balances {balances}, expected {expected.balances[index]}")
    return problems


def profile_esfsm(workload: Workload, top: int = 10) -> str:
    """cProfile one esfsm command loop; the top functions by cumulative and by self time."""
    engine = esfsm_engine()
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    esfsm_loop(engine, workload)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    return out.getvalue()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000, help="accounts to open (default 1000)")
    parser.add_argument("--ops", type=int, default=20_000, help="deposits/withdrawals after the opens (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side; the median is reported (default 3)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the operation sequence (default 42)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall (perf_counter, default) or cpu (process_time, steadier under load)",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile one esfsm run and print the top 10")
    args = parser.parse_args(argv)
    if args.accounts < 1 or args.ops < 0 or args.repeat < 1:
        parser.error("--accounts and --repeat must be at least 1, --ops at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    workload = make_workload(args.accounts, args.ops, args.seed)
    expected = reference(workload)
    runners: dict[str, Callable[[Workload, Clock], RunResult]] = {
        "esfsm": run_esfsm,
        "eventsourcing": run_eventsourcing,
    }
    # One small untimed pass per side first: lazy imports, caches and first-call costs.
    warm_up = make_workload(10, 200, args.seed)
    for run in runners.values():
        run(warm_up, clock)
    seconds: dict[str, list[float]] = {side: [] for side in runners}
    last: dict[str, RunResult] = {}
    for repeat in range(args.repeat):
        # Alternate which side goes first, so warm-up and drift favour neither.
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for side in order:
            last[side] = result = runners[side](workload, clock)
            seconds[side].append(result.seconds)

    problems = verify(workload, expected, last, args.seed)

    print(
        f"workload: {args.accounts} opens + {args.ops} deposits/withdrawals = {workload.commands} commands, "
        f"seed {args.seed}, median of {args.repeat} run(s), {args.clock} clock"
    )
    if args.profile:
        print(profile_esfsm(workload))
    rate = {side: workload.commands / statistics.median(times) for side, times in seconds.items()}
    print(f"{'side':<14} {'commands/s':>12} {'accepted':>9} {'rejected':>9}   runs (s)")
    for side in runners:
        result = last[side]
        runs = " ".join(f"{s:.3f}" for s in seconds[side])
        print(f"{side:<14} {rate[side]:>12,.0f} {result.accepted:>9} {result.rejected:>9}   {runs}")
    if problems:
        for problem in problems:
            print(f"MISMATCH {problem}", file=sys.stderr)
    else:
        print(f"check: counts and {min(BALANCE_SAMPLE, args.accounts)} sampled balances agree with the reference")
    print(f"ratio: {rate['esfsm'] / rate['eventsourcing']:.2f}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
