#!/usr/bin/env bash
# On a lent GPU machine (no package index there): install the onnxruntime-gpu wheel carried in
# parts, check the carried bundles on CUDA (and TensorRT, when its libraries load) against the
# CPU, time batch 1/8/32 at 128 tokens, print a table last and write JSON under $OUT.
#
#   bash benchmarks/gpu.sh receive    keep the parts this call carried (a call per few parts)
#   bash benchmarks/gpu.sh [run]      the last call: join, verify, install, check and time
#   bash benchmarks/gpu.sh join       receive, then join and sha256-check every file
#
#   FASTELECTRA_GPU_DRY=1 bash benchmarks/gpu.sh run BUNDLE...
#                                     here, without a GPU: the check and timings on the CPU
#
# The parts and the `run` calls that carry them come from benchmarks/gpu_wheel.sh (split,
# bundles, plan). Exit status: 0 all checks passed; 1 a check failed; 2 no GPU provider ran;
# 3 parts are missing; 4 a part or file is damaged; 5 the wheel does not fit this python.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

PARTS=${FASTELECTRA_GPU_PAYLOAD:-.gpu-payload}/parts
# Outside the repository: what earlier calls received stays while the machine is held, even
# if a later call's copy of the working tree drops ignored files.
WORK=${FASTELECTRA_GPU_WORK:-/tmp/fastelectra-gpu}
STORE=$WORK/parts
FILES=$WORK/files
OUT=${OUT:-$WORK/out}
DRY=${FASTELECTRA_GPU_DRY:-0}
if [[ $DRY == 1 && -x .venv/bin/python ]]; then
	PYTHON=${PYTHON:-.venv/bin/python}
else
	PYTHON=${PYTHON:-python3} # on the device: the image's python, which holds the CUDA libraries
fi

say() { echo "gpu.sh: $*" >&2; }
die() {
	local status=$1
	shift
	say "$*"
	exit "$status"
}

# Verify each part this call carried against parts.sha256 and move it to $STORE.
receive() {
	if [[ ! -d $STORE ]]; then # the first call on this machine: say what it is
		say "python3: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])'), $(uname -m)"
		if command -v nvidia-smi >/dev/null; then nvidia-smi -L >&2 || true; fi
	fi
	mkdir -p "$STORE"
	if [[ -f $PARTS/MANIFEST ]]; then
		cp "$PARTS/MANIFEST" "$PARTS/parts.sha256" "$STORE/"
	fi
	[[ -f $STORE/MANIFEST ]] || die 3 "no MANIFEST carried in $PARTS (see gpu_wheel.sh plan)"
	local part name line
	for part in "$PARTS"/*.part[0-9][0-9]; do
		[[ -f $part ]] || continue
		name=$(basename "$part")
		line=$(awk -v n="$name" '$2 == n' "$STORE/parts.sha256")
		[[ -n $line ]] || die 4 "$name is not in parts.sha256: re-run gpu_wheel.sh and carry again"
		(cd "$PARTS" && echo "$line" | sha256sum -c --quiet -) ||
			die 4 "$name does not match its sha256: it was damaged on the way; carry it again"
		mv "$part" "$STORE/$name"
	done
}

# Print what is here and what is not; the status is 3 when parts are missing.
report_parts() {
	local sum name count i missing=()
	while read -r sum name count; do
		local have=0
		for ((i = 0; i < count; i++)); do
			if [[ -f $STORE/$name.part$(printf %02d "$i") ]]; then
				have=$((have + 1))
			else
				missing+=("$name.part$(printf %02d "$i")")
			fi
		done
		say "$name: $have of $count parts here"
	done <"$STORE/MANIFEST"
	if ((${#missing[@]})); then
		say "missing: ${missing[*]}"
		return 3
	fi
}

join_files() {
	receive
	report_parts || die 3 "carry the missing parts (all of them if the machine was given back)"
	mkdir -p "$FILES"
	local sum name count i
	while read -r sum name count; do
		if [[ -f $FILES/$name ]] && echo "$sum  $FILES/$name" | sha256sum -c --quiet - 2>/dev/null; then
			continue # joined by an earlier run on this machine
		fi
		: >"$FILES/$name"
		for ((i = 0; i < count; i++)); do
			cat "$STORE/$name.part$(printf %02d "$i")" >>"$FILES/$name"
		done
		echo "$sum  $FILES/$name" | sha256sum -c --quiet - ||
			die 4 "$name: joined parts do not match the MANIFEST sha256"
		say "joined $name ($count parts, sha256 ok)"
	done <"$STORE/MANIFEST"
}

install_wheel() {
	local wheels wheel tag want
	wheels=("$FILES"/onnxruntime_gpu-*.whl)
	wheel=${wheels[0]}
	[[ -f $wheel ]] || die 3 "no onnxruntime_gpu wheel among the joined files"
	tag=$(basename "$wheel" | cut -d- -f3)
	want=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
	say "python: $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])') $(uname -m)"
	[[ $tag == "$want" ]] ||
		die 5 "$(basename "$wheel") is for $tag, this python is $want: DEVICE_PYTHON=${want:2:1}.${want:3} bash benchmarks/gpu_wheel.sh split"
	if [[ ! -f $WORK/site/.installed || $(cat "$WORK/site/.installed") != "$(basename "$wheel")" ]]; then
		rm -rf "$WORK/site"
		# --no-deps: numpy, protobuf, flatbuffers, packaging and sympy are in the image.
		"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
			--target "$WORK/site" "$wheel"
		basename "$wheel" >"$WORK/site/.installed"
	fi
	export PYTHONPATH=$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
}

unpack_bundles() {
	local tarball name
	BUNDLES=()
	mkdir -p "$WORK/bundles"
	for tarball in "$FILES"/bundle-*.tar; do
		[[ -f $tarball ]] || continue
		# gpu_wheel.sh packs directory NAME as bundle-NAME.tar.
		name=${tarball##*/bundle-}
		name=${name%.tar}
		rm -rf "${WORK:?}/bundles/$name"
		tar -C "$WORK/bundles" -xf "$tarball"
		BUNDLES+=("$WORK/bundles/$name")
	done
	((${#BUNDLES[@]})) || die 3 "no bundle-*.tar among the joined files (gpu_wheel.sh bundles)"
}

# The CUDA 13 / cuDNN 9 libraries of the image's pip packages (nvidia-*), and TensorRT's if
# any: onnxruntime's CUDA provider finds them through the loader's path. Libraries the
# provider still lacks after that are looked for on the whole disk.
library_path() {
	local dirs provider soname found
	dirs=$(pip_library_dirs)
	command -v ldd >/dev/null || {
		echo "$dirs"
		return
	}
	for provider in "$WORK"/site/onnxruntime/capi/libonnxruntime_providers_{cuda,tensorrt}.so; do
		[[ -f $provider ]] || continue
		for soname in $(LD_LIBRARY_PATH=$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ldd "$provider" |
			awk '/not found/ {print $1}'); do
			found=$(find /usr /opt /lib /lib64 -name "$soname" -print -quit 2>/dev/null || true)
			if [[ -n $found ]]; then
				dirs=$dirs${dirs:+:}$(dirname "$found")
			fi
		done
	done
	echo "$dirs"
}

pip_library_dirs() {
	"$PYTHON" - <<'EOF'
import site
import sys
from pathlib import Path

roots = [Path(p) for p in [*site.getsitepackages(), *sys.path] if p and Path(p).is_dir()]
dirs = []
for root in roots:
    for pattern in ("nvidia/*/lib", "nvidia/cu*/lib", "tensorrt_libs", "tensorrt"):
        for d in sorted(root.glob(pattern)):
            if any(d.glob("lib*.so*")) and str(d) not in dirs:
                dirs.append(str(d))
print(":".join(dirs))
EOF
}

check() {
	mkdir -p "$OUT"
	local status=0 dry=()
	if [[ $DRY == 1 ]]; then
		dry=(--dry-run)
	else
		local libs
		libs=$(library_path)
		export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
		export FASTELECTRA_TRT_CACHE=$WORK/trt-cache
		say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
		if command -v nvidia-smi >/dev/null; then nvidia-smi -L >&2 || true; fi
	fi
	export PYTHONPATH=${PYTHONPATH:-$REPO}
	PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_check.py "${BUNDLES[@]}" "${dry[@]}" \
		--json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/gpu_check.log" || status=${PIPESTATUS[0]}
	return "$status"
}

command=${1:-run}
if [[ $# -gt 0 ]]; then shift; fi
case $command in
receive)
	receive
	report_parts || say "more parts to come: carry them in the next calls"
	;;
join) join_files ;;
run)
	if [[ $DRY == 1 ]]; then
		BUNDLES=("$@")
		((${#BUNDLES[@]})) || die 2 "dry run: name the bundles to check"
	else
		join_files
		install_wheel
		unpack_bundles
	fi
	check
	;;
*)
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
