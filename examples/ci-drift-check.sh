#!/bin/sh
# Fail a CI job when a machine, an image tree or a fleet has drifted from its profile.
#
#   examples/ci-drift-check.sh PROFILE --root DIR          # an image tree in the workspace
#   examples/ci-drift-check.sh PROFILE --host admin@gpu1   # one host over SSH
#   examples/ci-drift-check.sh -i examples/fleet/inventory.yaml
#
# The arguments go to `provision plan` as they are. Its exit code is the job's:
# 0 no drift, 2 drift (the plan above shows each changed file as a diff; secrets
# never appear in it), 1 an error (unreachable host, bad profile). The JSON report
# is also written to $DRIFT_REPORT (default drift-report.json) for the job's artifacts.
# PROVISION names the provision executable (default: `provision` on PATH).
set -u

provision=${PROVISION:-provision}
report=${DRIFT_REPORT:-drift-report.json}

"$provision" plan "$@"
code=$?
if [ "$code" -le 2 ]; then
    # the same plan again as JSON for the artifact (a read-only round trip)
    "$provision" plan "$@" --json > "$report" 2>/dev/null || true
fi
case $code in
    0) echo "no drift" >&2 ;;
    2) echo "DRIFT: the target differs from the profile (see the plan above and $report);" \
            "run \`provision apply\` with the same arguments to converge it" >&2 ;;
    *) echo "drift check could not run (exit $code)" >&2 ;;
esac
exit "$code"
