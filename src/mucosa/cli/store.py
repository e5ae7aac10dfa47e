"""``mucosa store``, ``mucosa users`` and ``mucosa audit``: the case store of ``mucosa serve`` (``mucosa.store``).

Every command names its store with ``--store`` (a folder, or a ``postgresql+psycopg://`` URL with ``--media``
its shared media folder); without it, ``$MUCOSA_STORE``, else ``~/.local/share/mucosa/store``, as ``mucosa
serve`` does. A store that is missing or needs an upgrade is refused in one line (exit 2); only ``store
upgrade`` and ``store restore`` make one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from mucosa.choices import ROLES
from mucosa.cli.options import add_pseudonym_options

__all__ = ["add_parser"]


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _add_place(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        parser.add_argument("location", nargs="?", metavar="STORE", help="same as --store")
    parser.add_argument("--store", default=None, help="a store folder, or a postgresql+psycopg://USER@HOST/DB URL "
                        "(default: $MUCOSA_STORE, else ~/.local/share/mucosa/store)")
    parser.add_argument("--media", type=Path, default=None, help="the media folder the servers of a PostgreSQL store "
                        "share (a store folder keeps its media inside)")


def add_parser(sub) -> None:
    """Add ``store``, ``users`` and ``audit`` to the ``mucosa`` subcommands."""
    p = sub.add_parser("store", help="the case store of mucosa serve: upgrade, backup, restore, export")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("upgrade", help="make a store, or bring one to this mucosa's format (back it up first)")
    _add_place(q, positional=True)
    q.set_defaults(func=cmd_upgrade)
    q = actions.add_parser("backup", help="back the store up into a folder while it serves")
    q.add_argument("out", type=Path, help="the backup folder (an earlier backup there is replaced whole)")
    _add_place(q)
    q.set_defaults(func=cmd_backup)
    q = actions.add_parser("restore", help="restore a backup into a new folder or an empty PostgreSQL database")
    q.add_argument("backup", type=Path, help="a folder made by mucosa store backup")
    _add_place(q)
    q.set_defaults(func=cmd_restore)
    q = actions.add_parser("export", help="the reviewed cases as a manifest mucosa train reads")
    q.add_argument("--reviewed", action="store_true", required=True,
                   help="the cases reviewers have judged, labelled with the histology of their latest review")
    q.add_argument("-o", "--out", type=Path, required=True, help="the manifest CSV")
    add_pseudonym_options(q, "default: random, not stored; mucosa serve's key gives the pseudonyms of its reports")
    _add_place(q)
    q.set_defaults(func=cmd_export)

    p = sub.add_parser("users", help="the users of mucosa serve: add (prints the token once), list, disable")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("add", help="add a user and print their token (shown this once; only its hash is kept)")
    q.add_argument("name")
    q.add_argument("--role", required=True, choices=ROLES,
                   help="viewer: reads and uploads; reviewer: also confirms cases; admin: also deletes cases and "
                   "manages users")
    _add_place(q)
    q.set_defaults(func=cmd_users_add)
    q = actions.add_parser("list", help="every user, their role and whether they are active")
    _add_place(q)
    q.set_defaults(func=cmd_users_list)
    for action, text in (("disable", "stop a user's token from working (what they did stays theirs)"),
                         ("enable", "let a disabled user in again"),
                         ("token", "give a user a new token (printed once; the old one stops working)")):
        q = actions.add_parser(action, help=text)
        q.add_argument("name")
        _add_place(q)
        q.set_defaults(func=cmd_users_change, change=action)

    p = sub.add_parser("audit", help="the running audit: how the model does on the reviewed cases, by model and month")
    _add_place(p)
    p.add_argument("--since", type=_day, default=None, help="cases from this day on (exam date, else upload day)")
    p.add_argument("--model", default=None, help="verdicts of this model version only (CHECKPOINT@WEIGHTS)")
    p.add_argument("--classes", default=None, help="the model's classes, negative first, e.g. control,active "
                   "(default: those seen)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=cmd_audit)


def _open(args: argparse.Namespace):
    from mucosa.store import Store
    from mucosa.store.location import default_location

    return Store.open(args.store or default_location(), args.media)


def cmd_upgrade(args: argparse.Namespace) -> None:
    from mucosa.store import upgrade
    from mucosa.store.location import default_location

    where = args.store or args.location or default_location()
    before, now = upgrade(where, args.media)  # logs what it changed
    if before == now:
        print(f"store {where} is at revision {now} already: nothing to do")


def cmd_backup(args: argparse.Namespace) -> None:
    from mucosa.store.backup import backup_store
    from mucosa.store.location import default_location

    backup_store(args.store or default_location(), args.out, args.media)  # logs where; an older store too


def cmd_restore(args: argparse.Namespace) -> None:
    from mucosa.store import restore
    from mucosa.store.location import default_location

    info = restore(args.backup, args.store or default_location(), args.media)  # logs where
    print(f"the backup was made {info['created']}, with {info['media_files']} media files and "
          f"{info.get('case_folders', 0)} case folders")


def cmd_export(args: argparse.Namespace) -> None:
    from mucosa.data.pseudonyms import pseudonymiser

    pseudonym = pseudonymiser(args.pseudonym_key) if args.pseudonymise else None
    with _open(args) as store:
        store.export_reviewed(args.out, pseudonym)  # logs how many files
    print(f"train on them: mucosa train --manifest {args.out} --config configs/cpu-quick.yaml --out runs/NAME "
          "(configs/pcle.yaml for pCLE videos); the split into training, validation and test patients needs at "
          "least 3 patients of each class")


def cmd_users_add(args: argparse.Namespace) -> None:
    with _open(args) as store:
        token = store.add_user(args.name, args.role)
    print(f"user {args.name.strip()} ({args.role}) added; their token, shown this once:\n{token}")


def cmd_users_list(args: argparse.Namespace) -> None:
    with _open(args) as store:
        users = store.users()
    width = max([4, *(len(u.name) for u in users)])
    print(f"{'name':<{width}}  role      active  since")
    for user in users:
        print(f"{user.name:<{width}}  {user.role.value:<8}  {'yes' if user.active else 'no':<6}  "
              f"{user.created_at:%Y-%m-%d}")


def cmd_users_change(args: argparse.Namespace) -> None:
    with _open(args) as store:
        if args.change == "token":
            print(f"new token of {args.name} (shown this once; the old one no longer works):\n"
                  f"{store.renew_token(args.name)}")
            return
        change = store.disable_user if args.change == "disable" else store.enable_user
        user = change(args.name)
    print(f"user {user.name} ({user.role.value}) {'enabled' if user.active else 'disabled'}")


def cmd_audit(args: argparse.Namespace) -> None:
    classes = None if args.classes is None else [c.strip() for c in args.classes.split(",") if c.strip()]
    with _open(args) as store:
        report = store.audit(args.since, args.model, classes=classes)
        where = store.location
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(audit_table(report, where))


def _figure(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "—"
    low, high = entry["ci"] or (None, None)
    text = f"{entry['value']:.3f}"
    return text + (f" ({low:.3f}–{high:.3f})" if low is not None else "") + f" {entry['count'][0]}/{entry['count'][1]}"


def audit_table(report: dict, where: str) -> str:
    """The running audit as plain text: figures with exact 95% intervals overall, by model and by month, then
    the confusion table and the calibration curve."""
    overall = report["overall"]
    positive = f", positive {report['positive']}" if report["positive"] else ""
    counted = f"{overall['cases']} reviewed case{'' if overall['cases'] == 1 else 's'} counted"
    lines = [f"running audit of store {where}: {counted}, classes "
             f"{', '.join(report['classes']) or '—'}{positive}"]
    if overall["not_counted"]:
        lines.append("not counted: " + ", ".join(f"{why} {n}" for why, n in overall["not_counted"].items()))
    names = ("accuracy", "sensitivity", "specificity")
    groups = [("overall", overall), *((f"model {k}", v) for k, v in report["by_model"].items()),
              *((f"month {k}", v) for k, v in report["by_month"].items())]
    width = max(len(name) for name, _ in groups)
    lines += ["", f"{'':<{width}}  cases  " + "  ".join(f"{n + ' (95% CI)':<27}" for n in names)]
    for name, group in groups:
        lines.append(f"{name:<{width}}  {group['cases']:>5}  " + "  ".join(f"{_figure(group.get(n)):<27}"
                                                                          for n in names))
    confusion = overall["confusion"]
    if confusion["classes"]:
        side = max(9, *(len(c) for c in confusion["classes"]))
        lines += ["", "confusion table (rows: histology, columns: verdict)",
                  " " * side + "".join(f"{c:>{side}}" for c in confusion["classes"])]
        lines += [f"{c:<{side}}" + "".join(f"{n:>{side}}" for n in row)
                  for c, row in zip(confusion["classes"], confusion["counts"])]
    if overall["calibration"]:
        lines += ["", f"calibration (share of cases histology found {report['positive']}, by the model's probability)",
                  "probability  cases  predicted  observed (95% CI)"]
        for point in overall["calibration"]:
            low, high = point["ci"] or (None, None)
            interval = f" ({low:.2f}–{high:.2f})" if low is not None else ""
            lines.append(f"{point['bin'][0]:.1f}–{point['bin'][1]:.1f}      {point['cases']:>5}  "
                         f"{point['predicted']:>9.2f}  {point['observed']:.2f}{interval}")
    return "\n".join(line.rstrip() for line in lines)
