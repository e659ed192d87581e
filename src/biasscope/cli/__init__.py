"""The ``biasscope`` command line: thin click commands over the core API.

Each command group lives in its own module and is added here with one line.
"""

from __future__ import annotations

import click

from .core import explain_cmd, methods_cmd, models_cmd, predict_cmd, weights_group
from .faces import annotate_cmd
from .serve import serve_cmd

__all__ = ["main"]


@click.group()
@click.version_option(package_name="biasscope")
def main() -> None:
    """Audit image classifiers for bias and explain their decisions."""


main.add_command(predict_cmd)
main.add_command(explain_cmd)
main.add_command(weights_group)
main.add_command(models_cmd)
main.add_command(methods_cmd)
main.add_command(serve_cmd)
main.add_command(annotate_cmd)

from .audit import AUDIT_COMMANDS  # noqa: E402  (audit, audit-report, audit-manifest, audits)

for _cmd in AUDIT_COMMANDS:
    main.add_command(_cmd)

from .training import compare_cmd, train_cmd  # noqa: E402  (train, compare)

main.add_command(train_cmd)
main.add_command(compare_cmd)

from .verify import verify_audit_cmd  # noqa: E402  (verify-audit)

main.add_command(verify_audit_cmd)
