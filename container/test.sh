#!/usr/bin/env bash
# Builds the image with Debian's podman (no Docker engine, no registry needed) and checks SageMaker's
# container contract against it: serve as root and as uid 1000, the model routes, SIGTERM, and train.
# The recipe and why each podman setting is needed: see the "Container" section of README.md.
# `container/test.sh --host-checks` runs only the checks of this host (tools, apt's mirror, the work folder,
# ulimits) and exits; MME_APT_DIR (default /etc/apt) points them at another apt configuration.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv/bin
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/xgboost-mme
BASE=localhost/debian-py:bookworm
BASE_ARCHIVE=$CACHE/debian-py-bookworm.oci.tar
IMAGE=localhost/xgboost-mme:test
NAME=mme-test-$$
HOST_CA=/etc/ssl/certs/ca-certificates.crt
APT_DIR=${MME_APT_DIR:-/etc/apt}
HOST_CHECKS_ONLY=false
[[ ${1:-} != --host-checks ]] || HOST_CHECKS_ONLY=true

failures=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
die() { echo "FAIL: $*"; exit 1; }
# Whatever fails unexpectedly still ends with a FAIL line naming the step, never silently.
step="start"
trap 'code=$?; [[ $BASH_SUBSHELL != 0 ]] || echo "FAIL: $step: \`$BASH_COMMAND\` exited $code (container/test.sh line $LINENO)"' ERR

# apt_mirror: the first Debian mirror apt uses, from one-line (sources.list, *.list) or deb822 (*.sources)
# files; a host may have either, or both. Security mirrors carry no base system, so they are skipped.
apt_mirror() {
    local files=() file
    [[ -f $APT_DIR/sources.list ]] && files+=("$APT_DIR/sources.list")
    for file in "$APT_DIR"/sources.list.d/*; do
        [[ -f $file && ($file == *.list || $file == *.sources) ]] && files+=("$file")
    done
    ((${#files[@]})) || return 0
    awk '
        function usable(uri) { return uri ~ /^(https?|ftp):\/\// && uri !~ /security/ }
        /^[[:space:]]*#/ { next }
        /^URIs:/ { for (i = 2; i <= NF; i++) if (usable($i)) { print $i; exit } next }
        /^deb[[:space:]]/ {
            i = 2
            if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
            if (usable($i)) { print $i; exit }
        }' "${files[@]}"
}

# --- host checks ---------------------------------------------------------------------------------------
step="tools"
missing=()
for pkg in podman runc debootstrap uidmap; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if $HOST_CHECKS_ONLY; then
        echo "NOTE: tools: the full run installs with apt-get: ${missing[*]}"
    else
        [[ $(id -u) == 0 ]] || die "tools: install as root first: apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        pass "tools: podman runc debootstrap uidmap"
    fi
else
    pass "tools: podman runc debootstrap uidmap"
fi

step="apt mirror"
mirror=$(apt_mirror)
if [[ -n $mirror ]]; then
    pass "apt mirror: $mirror"
elif [[ -s $BASE_ARCHIVE && $HOST_CHECKS_ONLY == false ]]; then
    echo "NOTE: apt mirror: none found in $APT_DIR, not needed: the base image is cached"
else
    die "apt mirror: no Debian mirror in $APT_DIR/sources.list or $APT_DIR/sources.list.d/*.{list,sources}" \
        "(debootstrap needs one to make the base image)"
fi

# --- all podman state lives in WORK, so cleanup (system reset) touches nothing else; overlay needs a disk fs ---
step="work folder"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mme-container-test.XXXXXX")
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf CONTAINERS_CONF=$WORK/containers.conf
moto_pid=
cleanup() {
    [[ -z $moto_pid ]] || kill "$moto_pid" 2>/dev/null || true
    $HOST_CHECKS_ONLY || podman system reset --force >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
[[ $(stat -f -c %T "$WORK") != tmpfs ]] || die "work folder: $WORK is on tmpfs: set TMPDIR to a folder on disk"
pass "work folder: $WORK"

# crun refuses hybrid cgroups; podman's default rlimits need CAP_SYS_RESOURCE, so ask for what we have.
step="ulimits"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
[[ $nproc == unlimited || $nproc -gt $pid_max ]] && nproc=$pid_max
pass "ulimits: nofile=$nofile nproc=$nproc"
if $HOST_CHECKS_ONLY; then
    echo "PASS: host checks"
    exit 0
fi

step="podman configuration"
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[network]
network_config_dir = "$WORK/networks"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$WORK/tmp"
EOF

# --- base image: debootstrap once, then reuse the cached archive ---------------------------------------
step="base image"
if [[ ! -s $BASE_ARCHIVE ]]; then
    debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; die "debootstrap"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb
    tar -C "$WORK/rootfs" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$WORK/rootfs"
    mkdir -p "$CACHE"
    podman save -q --format oci-archive -o "$BASE_ARCHIVE.part" "$BASE"
    mv "$BASE_ARCHIVE.part" "$BASE_ARCHIVE"
    pass "base image made with debootstrap, cached at $BASE_ARCHIVE"
else
    podman load -q -i "$BASE_ARCHIVE" >/dev/null || die "load cached base image (delete $BASE_ARCHIVE to remake)"
    # An oci-archive has no repository name of its own: tag whatever was loaded.
    podman tag "$(podman images -q | head -1)" "$BASE"
    pass "base image loaded from $BASE_ARCHIVE"
fi

# --- build: docker format keeps HEALTHCHECK; the host CA is mounted for pip, never copied in ---------
step="image build"
podman build -q --format docker --network=host \
    -v "$HOST_CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt \
    --build-arg BASE_IMAGE="$BASE" -f container/Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; die "podman build"; }
pass "image built: $IMAGE"

label() { podman image inspect --format "{{index .Config.Labels \"$1\"}}" "$IMAGE"; }
if [[ $(label com.amazonaws.sagemaker.capabilities.multi-models) == true &&
      $(label com.amazonaws.sagemaker.capabilities.accept-bind-to-port) == true ]]; then
    pass "SageMaker capability labels"
else
    fail "SageMaker capability labels"
fi

# --- a tiny model and its training data, made on the host with the project's venv --------------------
step="model for the test"
"$VENV/mme" train --locations Chicago_IL --houses 200 --data "$WORK/data" --out "$WORK/models" \
    >"$WORK/train.log" 2>&1 || { tail -20 "$WORK/train.log"; die "mme train on the host"; }
[[ -s $WORK/models/Chicago_IL.tar.gz ]] || die "mme train wrote no $WORK/models/Chicago_IL.tar.gz"
mkdir -p "$WORK/opt-ml/models/chicago/model"
tar -xzf "$WORK/models/Chicago_IL.tar.gz" -C "$WORK/opt-ml/models/chicago/model"
chmod -R a+rX "$WORK/opt-ml"
# A held-out house without its label (the first column) is a request the model was made for.
row=$(head -1 "$WORK/data/Chicago_IL/test/Chicago_IL_test.csv" | cut -d, -f2-)

# podman schedules HEALTHCHECK runs with systemd timers; without systemd it logs an error per container
# (harmless: `podman healthcheck run` still works). Drop just that noise.
pod() { podman "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

# --- serve ---------------------------------------------------------------------------------------------
step="serve"
free_port() { "$VENV/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# http METHOD PATH [curl args...] -> prints the status code; the body is in $WORK/body.
http() {
    local method=$1 path=$2
    shift 2
    curl -s -o "$WORK/body" -w '%{http_code}' -X "$method" "http://127.0.0.1:$port$path" "$@" || true
}

wait_ready() {
    for _ in $(seq 120); do
        [[ $(http GET /ping) == 200 ]] && return 0
        [[ $(podman inspect --format '{{.State.Running}}' "$1") == true ]] || break
        sleep 0.5
    done
    podman logs "$1" 2>&1 | tail -20
    return 1
}

expect() {  # expect WHAT CODE METHOD PATH [curl args...]
    local what=$1 want=$2 got
    shift 2
    got=$(http "$@")
    if [[ $got == "$want" ]]; then pass "$what ($got)"; else fail "$what: want $want, got $got: $(head -c 300 "$WORK/body")"; fi
}

# stop_check NAME WHAT CODES...: SIGTERM, as SageMaker sends it, must end the server before the 30 s SIGKILL
# (137) with one of CODES.
stop_check() {
    local name=$1 what=$2 started elapsed code
    shift 2
    started=$(date +%s)
    pod stop -t 30 "$name" >/dev/null
    elapsed=$(($(date +%s) - started))
    code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    if [[ " $* " == *" $code "* ]]; then
        pass "$what: SIGTERM -> exit $code after ${elapsed}s"
    else
        podman logs "$name" 2>&1 | tail -20
        fail "$what: SIGTERM -> exit $code after ${elapsed}s, want one of: $*"
    fi
    pod rm -f "$name" >/dev/null
}

contract() {  # the model routes against the running server
    local who=$1
    expect "$who: GET /ping" 200 GET /ping
    expect "$who: POST /models loads chicago" 200 POST /models -H 'Content-Type: application/json' \
        -d '{"model_name": "chicago", "url": "/opt/ml/models/chicago/model"}'
    expect "$who: GET /models" 200 GET /models
    if grep -q '"chicago"' "$WORK/body"; then pass "$who: GET /models lists chicago"; else fail "$who: GET /models lists chicago: $(cat "$WORK/body")"; fi
    expect "$who: GET /models/chicago" 200 GET /models/chicago
    expect "$who: invoke text/csv" 200 POST /models/chicago/invoke -H 'Content-Type: text/csv' --data-binary "$row"
    if grep -Eq '^[[:space:]]*\[?[-+0-9.eE]+' "$WORK/body"; then pass "$who: prediction is a number: $(head -c 40 "$WORK/body")"; else fail "$who: prediction is a number: $(head -c 300 "$WORK/body")"; fi
    expect "$who: DELETE /models/chicago" 200 DELETE /models/chicago
    expect "$who: invoke after unload" 404 POST /models/chicago/invoke -H 'Content-Type: text/csv' --data-binary "$row"
}

# As root, with --init as the NOTES recipe runs it; `serve` is the command SageMaker passes.
port=$(free_port)
pod run -d -q --init --name "$NAME-root" --network=host -e SAGEMAKER_BIND_TO_PORT="$port" \
    -v "$WORK/opt-ml/models:/opt/ml/models:ro" "$IMAGE" serve --host 127.0.0.1 >/dev/null
if wait_ready "$NAME-root"; then
    pass "root: serve answers /ping on port $port"
    contract root
    if podman healthcheck run "$NAME-root" >/dev/null 2>&1; then pass "root: HEALTHCHECK"; else fail "root: HEALTHCHECK"; fi
else
    fail "root: serve answers /ping on port $port"
fi
stop_check "$NAME-root" root 0

# As uid 1000 and without --init, exactly like SageMaker's `docker run IMAGE serve`: PID 1 is the server.
port=$(free_port)
pod run -d -q --user 1000 --name "$NAME-user" --network=host -e SAGEMAKER_BIND_TO_PORT="$port" \
    -v "$WORK/opt-ml/models:/opt/ml/models:ro" "$IMAGE" serve --host 127.0.0.1 >/dev/null
if wait_ready "$NAME-user"; then
    pass "uid 1000: serve answers /ping on port $port"
    contract "uid 1000"
else
    fail "uid 1000: serve answers /ping on port $port"
fi
stop_check "$NAME-user" "uid 1000, no --init" 0

# --- train: SageMaker's training layout under /opt/ml ----------------------------------------------------
step="train"
input=$WORK/opt-ml/input
mkdir -p "$input/config" "$input/data/train" "$input/data/validation" "$WORK/opt-ml/model" "$WORK/opt-ml/output"
cp "$WORK"/data/Chicago_IL/train/*.csv "$input/data/train/"
cp "$WORK"/data/Chicago_IL/val/*.csv "$input/data/validation/"
echo '{"num_round": "5", "max_depth": "3"}' >"$input/config/hyperparameters.json"
if pod run --rm --name "$NAME-train" --network=host \
    -v "$input:/opt/ml/input:ro" -v "$WORK/opt-ml/model:/opt/ml/model" -v "$WORK/opt-ml/output:/opt/ml/output" \
    "$IMAGE" train >"$WORK/train-job.log" 2>&1 && [[ -s $WORK/opt-ml/model/xgboost-model ]]; then
    pass "train: /opt/ml/model/xgboost-model written"
else
    tail -20 "$WORK/train-job.log"
    fail "train: /opt/ml/model/xgboost-model written"
fi

# --- the compose stack with moto standing in for MinIO, whose image needs a registry -------------------
step="compose stack"
# The seed job and the server run exactly as docker-compose.yml says, only MinIO's address is swapped.
moto_port=$(free_port)
"$VENV/python" -m moto.server -H 127.0.0.1 -p "$moto_port" >"$WORK/moto.log" 2>&1 &
moto_pid=$!
s3_url=http://127.0.0.1:$moto_port
compose_run_args() {  # SERVICE -> podman run arguments from the compose file: entrypoint, env, image, command
    "$VENV/python" -c '
import json, subprocess, sys
from pathlib import Path
import compose
model = subprocess.run([str(Path(compose.__file__).parent / "docker-compose"), "config", "--format", "json"],
                       capture_output=True, text=True, check=True).stdout
service = json.loads(model)["services"][sys.argv[1]]
args = ["--entrypoint", json.dumps(service["entrypoint"])] if service.get("entrypoint") else []
for key, value in service.get("environment", {}).items():
    args += ["-e", f"{key}={value}"]
args += [sys.argv[2], *service["command"]]
sys.stdout.write("".join(arg.replace("http://minio:9000", sys.argv[3]) + "\0" for arg in args))
' "$1" "$IMAGE" "$s3_url"
}
mapfile -d '' seed < <(compose_run_args seed)
mapfile -d '' server < <(compose_run_args mme)
if pod run --rm --name "$NAME-seed" --network=host "${seed[@]}" >"$WORK/seed.log" 2>&1; then
    pass "compose seed job: bucket made, city models trained and uploaded"
else
    tail -20 "$WORK/seed.log"
    fail "compose seed job"
fi
port=$(free_port)
pod run -d -q --name "$NAME-s3" --network=host -e SAGEMAKER_BIND_TO_PORT="$port" -e MME_HOST=127.0.0.1 \
    "${server[@]}" >/dev/null
if wait_ready "$NAME-s3"; then
    pass "compose server: serve --models s3://models/ answers /ping"
    expect "compose server: /invocations, TargetModel Chicago_IL.tar.gz" 200 POST /invocations \
        -H 'X-Amzn-SageMaker-Target-Model: Chicago_IL.tar.gz' -H 'Content-Type: text/csv' --data-binary "$row"
    if prediction=$("$VENV/python" -c '
import sys, boto3
runtime = boto3.client("sagemaker-runtime", endpoint_url=sys.argv[1], region_name="us-east-1",
                       aws_access_key_id="local", aws_secret_access_key="local")
response = runtime.invoke_endpoint(EndpointName="local", TargetModel="Chicago_IL.tar.gz",
                                   ContentType="text/csv", Body=sys.argv[2].encode())
print(response["Body"].read().decode())' "http://127.0.0.1:$port" "$row" 2>&1); then
        pass "compose server: boto3 invoke_endpoint: $prediction"
    else
        fail "compose server: boto3 invoke_endpoint: $prediction"
    fi
else
    fail "compose server: serve --models s3://models/ answers /ping"
fi
stop_check "$NAME-s3" "compose server" 0
kill "$moto_pid"

if ((failures)); then
    echo "FAIL: container-test, $failures check(s) failed"
    exit 1
fi
echo "PASS: container-test"
