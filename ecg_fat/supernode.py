"""`ecg-fat-supernode`: Flower's SuperNode that runs only the apps its site approved, and says plainly when
the server has not registered its key yet.

Approved apps: with `--approved-apps FILE` (the site's list of app-bundle sha256 sums, one per line, written
by `ecg-fat approve`), a ClientApp whose bundle is not listed is never installed or run: the message gets
Flower's failed reply (INVALID_FAB) with the reason, and the SuperNode goes on. Flower 1.39's own option,
--trusted-entities, verifies only apps signed through Flower Hub, so this entry point hooks the SuperNode's
check of a new run's bundle (`flwr.supernode.start_client_internal`), keeping Flower's refusal path.

A SuperNode whose public key the server has not registered is refused with Flower's "[code: 2004] Failed to
activate SuperNode. The SuperNode could not establish a connection to the SuperLink", which sends a
hospital's IT looking at the network. This entry point runs flower-supernode with the given flags in this
process and rewrites that one exit message into a line that names the key to send; every other message is
Flower's own. The site compose restarts the SuperNode, so the line comes once per try until the key is in.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

NOT_REGISTERED = "[code: 2004] Failed to activate SuperNode"
KEY_HINT = "ECG_FAT_PUBLIC_KEY"  # the public key's path as the site's operator sees it (set by the site compose)


def public_key_hint() -> str:
    hint = os.environ.get(KEY_HINT, "")
    if not hint:
        return "this SuperNode's public key (node.pub)"
    # The site compose's paths are relative to docker/site/, the operator's to the repository root.
    return f"docker/site/{hint.removeprefix('./')}" if not os.path.isabs(hint) else hint


def not_registered_line(reason: str) -> str:
    return (
        "ecg-fat-supernode: this SuperNode's key is not registered at the server yet: send "
        f"{public_key_hint()} to the server's operator (Flower: {reason})"
    )


class _ExplainUnregisteredKey(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if NOT_REGISTERED in message:
            reason = next(line for line in message.splitlines() if NOT_REGISTERED in line).strip()
            record.msg, record.args = not_registered_line(reason), ()
        return True


def read_approved(path: Path) -> frozenset[str]:
    """The sha256 sums a site approved: the first word of each line that is not blank or a # comment."""
    lines = (line.split("#", 1)[0].split() for line in path.read_text().splitlines())
    return frozenset(words[0].lower() for words in lines if words)


def approve_only(approved: frozenset[str], listed_in: Path) -> None:
    """Make the SuperNode refuse every app bundle whose sha256 is not in `approved`."""
    import hashlib

    from flwr.app import Error
    from flwr.common.constant import ErrorCode
    from flwr.supercore.logger import FLOWER_LOGGER
    from flwr.supernode import start_client_internal as supernode

    pull = supernode._pull_and_store_message

    def pull_approved_only(**kwargs: object) -> int | None:
        get_fab = kwargs["get_fab"]

        def checked(fab_hash: str, run_id: int):
            fab = get_fab(fab_hash, run_id)  # type: ignore[operator]
            digest = hashlib.sha256(fab.content).hexdigest()
            if digest in approved:
                fab.verifications = {**fab.verifications, "valid_license": "approved by this site"}
            else:  # no valid_license: Flower replies with its FAB verification error, which names ours
                FLOWER_LOGGER.error(
                    "refused app bundle %s: it is not in this site's approved list %s", digest, listed_in
                )
                fab.verifications = {}
                supernode.FAB_VERIFICATION_ERROR = Error(
                    ErrorCode.INVALID_FAB, f"app bundle {digest} is not approved at this site"
                )
            return fab

        # A trusted-entities mapping switches Flower's bundle check on; _verify_fab below decides it.
        return pull(**{**kwargs, "get_fab": checked, "trusted_entities": {"ecg-fat": str(listed_in)}})

    supernode._pull_and_store_message = pull_approved_only
    supernode._verify_fab = lambda fab, trusted: hashlib.sha256(fab.content).hexdigest() in approved


def main() -> None:
    from flwr.supercore.logger import FLOWER_LOGGER
    from flwr.supernode.cli import flower_supernode

    parser = argparse.ArgumentParser(prog="ecg-fat-supernode", add_help=False)
    parser.add_argument("--approved-apps", type=Path, metavar="FILE")
    ours, flower_args = parser.parse_known_args()
    FLOWER_LOGGER.addFilter(_ExplainUnregisteredKey())
    if ours.approved_apps is not None:
        try:
            approved = read_approved(ours.approved_apps)
        except OSError as error:
            sys.exit(f"ecg-fat-supernode: --approved-apps {ours.approved_apps}: {error.strerror}")
        FLOWER_LOGGER.info(
            "ecg-fat-supernode: runs only the %d app bundle(s) listed in %s", len(approved), ours.approved_apps
        )
        approve_only(approved, ours.approved_apps)
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
