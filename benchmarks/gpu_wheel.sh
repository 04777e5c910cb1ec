#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu.sh needs on a lent GPU machine that can reach
# no package index: the onnxruntime-gpu wheel and the bundles to check, cut into parts small
# enough to travel in the device tool's `run` calls (64 MiB a call, the working tree included).
#
#   bash benchmarks/gpu_wheel.sh split              download onnxruntime-gpu, cut it into parts
#   bash benchmarks/gpu_wheel.sh bundles [PRESET]   build PRESET (default minilm) in fp32 and fp16
#                                                   (TensorFlow, here) and cut them into parts
#   bash benchmarks/gpu_wheel.sh plan               print the `run` calls that carry every part
#   bash benchmarks/gpu_wheel.sh pack FILE          cut any file into parts (used by the above)
#
# Parts, MANIFEST (sha256, name and part count of each whole file) and parts.sha256 (one line
# per part, `sha256sum -c` format) go to .gpu-payload/parts/, which git ignores.
set -euo pipefail
cd "$(dirname "$0")/.."

PAYLOAD=${FASTELECTRA_GPU_PAYLOAD:-.gpu-payload}
PARTS=$PAYLOAD/parts
# Under 60 MiB, so that a part and the working tree fit in one 64 MiB call.
PART_MIB=${FASTELECTRA_GPU_PART_MIB:-59}
CALL_MIB=${FASTELECTRA_GPU_CALL_MIB:-64}
ORT_GPU_VERSION=${ORT_GPU_VERSION:-1.31.1}
# The device's python3 (device README, KINDS.md: 3.12.3 on x86-64). gpu.sh prints the one it
# finds and refuses a wheel built for another before installing anything.
DEVICE_PYTHON=${DEVICE_PYTHON:-3.12}
PYTHON=${PYTHON:-.venv/bin/python}
export FASTELECTRA_CACHE=${FASTELECTRA_CACHE:-$PWD/.cache/modules}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

die() {
	echo "gpu_wheel.sh: $*" >&2
	exit 1
}

# Drop a file's old parts and its lines in MANIFEST and parts.sha256.
forget() {
	local name=$1
	rm -f "$PARTS/$name".part[0-9][0-9]
	for list in MANIFEST parts.sha256; do
		[[ -f $PARTS/$list ]] || continue
		# Exact names: the file itself, or NAME.partNN.
		awk -v n="$name" '$2 == n { next }
			index($2, n ".part") == 1 && length($2) == length(n) + 7 { next }
			{ print }' "$PARTS/$list" >"$PARTS/$list.tmp"
		mv "$PARTS/$list.tmp" "$PARTS/$list"
	done
}

pack() {
	local file=$1 name sum count
	[[ -f $file ]] || die "pack: no such file: $file"
	name=$(basename "$file")
	mkdir -p "$PARTS"
	forget "$name"
	split -b "${PART_MIB}M" -d -a 2 "$file" "$PARTS/$name.part"
	sum=$(sha256sum "$file" | cut -d' ' -f1)
	count=$(find "$PARTS" -maxdepth 1 -name "$name.part[0-9][0-9]" | wc -l)
	echo "$sum $name $count" >>"$PARTS/MANIFEST"
	(cd "$PARTS" && sha256sum "$name".part[0-9][0-9] >>parts.sha256)
	echo "packed $name ($(du -h "$file" | cut -f1)) into $count part(s) under $PARTS"
}

split_wheel() {
	local download=$PAYLOAD/download wheel
	rm -rf "$download"
	mkdir -p "$download"
	"$PYTHON" -m pip download --no-deps --only-binary=:all: \
		--python-version "$DEVICE_PYTHON" --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d "$download" "onnxruntime-gpu==$ORT_GPU_VERSION"
	local wheels=("$download"/onnxruntime_gpu-*.whl)
	wheel=${wheels[0]}
	[[ -f $wheel ]] || die "pip saved no onnxruntime_gpu wheel in $download"
	# One wheel at a time: gpu.sh installs the one it finds.
	if [[ -f $PARTS/MANIFEST ]]; then
		awk '$2 ~ /^onnxruntime_gpu-.*\.whl$/ {print $2}' "$PARTS/MANIFEST" | while read -r old; do
			forget "$old"
		done
	fi
	pack "$wheel"
}

pack_bundles() {
	local preset=${1:-minilm} precision out tarball
	mkdir -p "$PAYLOAD/bundles" "$PAYLOAD/staging"
	for precision in fp32 fp16; do
		out=$PAYLOAD/bundles/$preset-$precision
		if [[ -f $out/fastelectra.json ]]; then
			echo "reusing $out (delete it to rebuild)"
		else
			"$(dirname "$PYTHON")/fastelectra" build "$preset" -o "$out" --precision "$precision"
		fi
		tarball=$PAYLOAD/staging/bundle-$preset-$precision.tar
		tar -C "$PAYLOAD/bundles" -cf "$tarball" "$preset-$precision"
		pack "$tarball"
		rm -f "$tarball"
	done
}

# First-fit decreasing: parts into as few calls as fit the call limit, after the working tree.
plan() {
	[[ -f $PARTS/MANIFEST ]] || die "nothing packed yet: run split and bundles first"
	local tree
	# A tracked file deleted in the working tree is listed but cannot be stat'ed: skip it
	# (xargs would exit 123 and, under pipefail, end the plan).
	tree=$(git ls-files -z --cached --others --exclude-standard |
		{ xargs -0 -r stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
	"$PYTHON" - "$PARTS" "$tree" "$CALL_MIB" <<'EOF'
import json
import sys
from pathlib import Path

parts_dir, tree, call_mib = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
always = [parts_dir / "MANIFEST", parts_dir / "parts.sha256"]
# A MiB of slack: files that appear in the tree between this plan and the calls.
budget = call_mib * 2**20 - tree - sum(p.stat().st_size for p in always) - 2**20
parts = sorted(parts_dir.glob("*.part[0-9][0-9]"), key=lambda p: (-p.stat().st_size, p.name))
calls: list[list[Path]] = []
for part in parts:
    size = part.stat().st_size
    if size > budget:
        sys.exit(f"{part.name} ({size} B) does not fit in a call beside a {tree} B tree")
    fit = next(
        (c for c in calls if len(c) < 6 and sum(p.stat().st_size for p in c) + size <= budget),
        None,
    )
    if fit is None:
        calls.append([part])
    else:
        fit.append(part)
print(
    f"# {len(parts)} parts in {len(calls)} calls (working tree {tree / 2**20:.1f} MiB). Make "
    "them back to back: the machine is given back 30 s after a call, and the parts with it."
)
for i, call in enumerate(calls, 1):
    last = i == len(calls)
    print(json.dumps({
        "command": "bash benchmarks/gpu.sh" + ("" if last else " receive"),
        "carry": [str(p) for p in always + call],
        "timeout_s": 360 if last else 120,
    }))
EOF
}

case ${1:-} in
split) split_wheel ;;
bundles) pack_bundles "${2:-minilm}" ;;
plan) plan ;;
pack)
	[[ $# -eq 2 ]] || die "usage: gpu_wheel.sh pack FILE"
	pack "$2"
	;;
*)
	sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
