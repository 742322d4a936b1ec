"""CLI for this stage (placeholder until the stage lands)."""

from ehrfm.errors import UserError


def _todo(args):
    raise UserError(f"{args.command} is not implemented yet")


def register(sub):
    sub.add_parser("labels", help="(not yet implemented)").set_defaults(func=_todo)
    sub.add_parser("probe", help="(not yet implemented)").set_defaults(func=_todo)
    sub.add_parser("finetune", help="(not yet implemented)").set_defaults(func=_todo)
    sub.add_parser("zeroshot", help="(not yet implemented)").set_defaults(func=_todo)
    sub.add_parser("baseline", help="(not yet implemented)").set_defaults(func=_todo)
