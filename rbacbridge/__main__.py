import os
import sys

try:
    from rbacbridge.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: same line, same exit code
    sys.stderr.write("error: interrupted: nothing more is changed; run the same command again to finish "
                     "(it plans again from live state)\n")
    sys.stderr.flush()
    os._exit(130)

main()
