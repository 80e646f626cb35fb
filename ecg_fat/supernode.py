"""`ecg-fat-supernode`: Flower's SuperNode, saying plainly when the server has not registered its key yet.

A SuperNode whose public key the server has not registered is refused with Flower's "[code: 2004] Failed to
activate SuperNode. The SuperNode could not establish a connection to the SuperLink", which sends a
hospital's IT looking at the network. This entry point runs flower-supernode with the given flags in this
process and rewrites that one exit message into a line that names the key to send; every other message is
Flower's own. The site compose restarts the SuperNode, so the line comes once per try until the key is in.
"""

from __future__ import annotations

import logging
import os
import sys

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


def main() -> None:
    from flwr.supercore.logger import FLOWER_LOGGER
    from flwr.supernode.cli import flower_supernode

    FLOWER_LOGGER.addFilter(_ExplainUnregisteredKey())
    sys.argv = ["flower-supernode", *sys.argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main()
