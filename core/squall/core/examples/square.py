"""An external-command processing: reads {"items": [{"number": n}, ...]} on stdin, writes n² for each.

Any program in any language can be a processing the same way; this one is registered as ``square``.
"""

import json
import sys


def main() -> None:
    batch = json.load(sys.stdin)
    results = [item["number"] ** 2 for item in batch["items"]]
    json.dump({"results": results}, sys.stdout)


if __name__ == "__main__":
    main()
