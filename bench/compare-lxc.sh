#!/usr/bin/env bash
# compare-lxc.sh: berth against Debian's LXC 5.0 on the same rootfs and the same
# backing filesystems. Run by hand as root; never in CI (it mounts, makes loop
# devices and zpools, and may start zfs-fuse).
#
# Every operation is a pair of commands that do the same thing, berth's and LXC's;
# the pair runs rep by rep, with the side that goes first alternating, so cache
# state and drift hit both alike. Times are whole-process wall clock, medians of
# N runs. Where LXC (or berth) cannot do an operation, it runs once and the table
# shows its error instead of a time.
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk must use '.' as the decimal point

usage() {
	cat <<'EOF'
Usage: bench/compare-lxc.sh [--berth PATH] [--runs N] [--backends dir,overlay,btrfs,loop,zfs]
                            [--rootfs minimal|debootstrap|DIR]
  --berth    berth binary (default: target/release/berth, else `berth` on PATH)
  --runs     repetitions per operation; the table shows medians (default 5)
  --backends which backends to compare (default: all five)
  --rootfs   minimal (berth's busybox template), debootstrap, or an existing directory
Needs root, lxc (lxc-copy, lxc-execute, lxc-destroy), rsync (LXC copies with it),
mkfs.ext4, mkfs.btrfs + btrfs, mkfs.xfs, zfs-fuse + zpool + zfs, as the backends need.
EOF
}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH="" RUNS=5 BACKENDS="dir,overlay,btrfs,loop,zfs" ROOTFS_KIND=minimal
while (($#)); do
	case $1 in
	--berth) BERTH=${2:?--berth needs a path}; shift 2 ;;
	--runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
	--backends) BACKENDS=${2:?--backends needs a list}; shift 2 ;;
	--rootfs) ROOTFS_KIND=${2:?--rootfs needs a value}; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; exit 2 ;;
	esac
done
die() { echo "compare-lxc: $*" >&2; exit 1; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs wants a positive integer, not '$RUNS'"
IFS=, read -r -a SELECTED <<<"$BACKENDS"
for b in "${SELECTED[@]}"; do [[ $b =~ ^(dir|overlay|btrfs|loop|zfs)$ ]] || die "unknown backend '$b'"; done
[[ $ROOTFS_KIND == minimal || $ROOTFS_KIND == debootstrap || -d $ROOTFS_KIND ]] ||
	die "--rootfs: '$ROOTFS_KIND' is neither minimal, debootstrap nor a directory"
((EUID == 0)) || die "run as root"

if [[ -z $BERTH ]]; then
	if [[ -x $REPO/target/release/berth ]]; then BERTH=$REPO/target/release/berth
	elif command -v berth >/dev/null; then BERTH=$(command -v berth)
	else
		echo "building berth (cargo build --release -p berth-cli)" >&2
		(cd "$REPO" && cargo build --release -p berth-cli)
		BERTH=$REPO/target/release/berth
	fi
fi
[[ -x $BERTH ]] || die "berth binary '$BERTH' is not executable"
BERTH=$(realpath "$BERTH")

need=(lxc-copy lxc-execute lxc-destroy rsync mkfs.ext4)
for b in "${SELECTED[@]}"; do
	case $b in btrfs) need+=(mkfs.btrfs btrfs) ;; loop) need+=(mkfs.xfs) ;; zfs) need+=(zfs-fuse zpool zfs) ;; esac
done
for p in "${need[@]}"; do command -v "$p" >/dev/null || die "'$p' is missing (apt-get install it)"; done

# ---- state the cleanup needs: everything lives under $T -----------------------------
T=$(mktemp -d /var/tmp/compare-lxc.XXXXXX)
ZPOOL="" ZFS_FUSE_PID=""
BERTH_CTRS=() LXC_CTRS=() POOLS=() # in creation order; torn down newest first

# Never redirect a call of a shell function here: bash applies that redirection in
# the shell itself, and a signal trap run meanwhile would inherit it. So these
# redirect inside, and the timed commands are arrays of plain programs.
BERTH_CMD=("$BERTH" --root "$T/berth")
LXC_LOG=(-l ERROR -o /dev/null) # LXC prints its errors on stderr only with a log priority
b() { "${BERTH_CMD[@]}" "$@" >/dev/null; }
b_quiet() { "${BERTH_CMD[@]}" "$@" >/dev/null 2>&1; }
track_berth() { [[ " ${BERTH_CTRS[*]} " == *" $1 "* ]] || BERTH_CTRS+=("$1"); }
track_lxc() { [[ " ${LXC_CTRS[*]} " == *" $1|$2 "* ]] || LXC_CTRS+=("$1|$2"); }

mounts_under_t() { # deepest first
	awk -v t="$T" '$5 == t || index($5, t "/") == 1 { print length($5), $5 }' /proc/self/mountinfo |
		sort -rn | cut -d' ' -f2-
}
loops_under_t() { losetup -l -n -O NAME,BACK-FILE | awk -v t="$T/" 'index($2, t) == 1 { print $1 }'; }

cleanup() {
	local rc=$? i m n
	trap '' INT TERM # a second Ctrl-C must not cut the cleanup short
	trap - EXIT
	set +e
	echo "compare-lxc: cleaning up $T" >&2
	# clones are newer than their origins, so newest first never hits a dependent
	for ((i = ${#LXC_CTRS[@]} - 1; i >= 0; i--)); do
		lxc-destroy "${LXC_LOG[@]}" -f -P "${LXC_CTRS[i]%%|*}" -n "${LXC_CTRS[i]#*|}" >/dev/null 2>&1
	done
	for ((i = ${#BERTH_CTRS[@]} - 1; i >= 0; i--)); do b_quiet destroy -f "${BERTH_CTRS[i]}"; done
	for i in "${POOLS[@]}"; do b_quiet pool rm "$i"; done
	if [[ -n $ZPOOL ]]; then
		# zfs-fuse answers "pool is busy" for a while after heavy use
		for i in 1 2 3 4 5 6; do zpool destroy -f "$ZPOOL" 2>/dev/null && break; sleep 2; done
	fi
	for i in 1 2 3; do
		n=0
		while read -r m; do
			[[ -n $m ]] || continue
			n=1
			if ((i < 3)); then umount "$m" 2>/dev/null; else umount -l "$m"; fi
		done < <(mounts_under_t)
		((n)) || break
		sleep 1
	done
	if [[ -n $ZPOOL ]] && zpool list "$ZPOOL" >/dev/null 2>&1; then
		zpool destroy -f "$ZPOOL" 2>/dev/null || zpool export -f "$ZPOOL"
	fi
	while read -r m; do [[ -z $m ]] || losetup -d "$m"; done < <(loops_under_t)
	# stop zfs-fuse only if this script started it and nobody else has a pool in it
	if [[ -n $ZFS_FUSE_PID ]]; then
		if [[ -z $(zpool list -H -o name 2>/dev/null) ]]; then
			kill "$ZFS_FUSE_PID" 2>/dev/null
			for i in $(seq 50); do kill -0 "$ZFS_FUSE_PID" 2>/dev/null || break; sleep 0.2; done
		else
			echo "compare-lxc: leaving zfs-fuse ($ZFS_FUSE_PID) running: other pools use it" >&2
		fi
	fi
	rm -rf "$T"
	local left
	left=$(grep -F "$T" /proc/self/mountinfo; losetup -a | grep -F "$T"; [[ ! -e $T ]] || echo "$T exists")
	if [[ -n $ZPOOL ]] && zpool list "$ZPOOL" >/dev/null 2>&1; then left+=$'\n'"zpool $ZPOOL"; fi
	if [[ -n ${left//$'\n'/} ]]; then echo "compare-lxc: WARNING: left over:"$'\n'"$left" >&2
	else echo "compare-lxc: nothing left over" >&2; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT # exit runs the EXIT trap: one cleanup path for every ending
trap 'exit 143' TERM

say() { echo "compare-lxc: $*" >&2; }

# ---- setup -------------------------------------------------------------------------
make_fs() { # KIND: a 4 GiB sparse image of that filesystem mounted at $T/KIND (once)
	local kind=$1 img=$T/$1.img
	mountpoint -q "$T/$kind" 2>/dev/null && return 0
	truncate -s 4G "$img"
	case $kind in
	ext4) mkfs.ext4 -q -F "$img" ;;
	btrfs | btrfs2) mkfs.btrfs -q "$img" >/dev/null ;; # below ~4 GiB btrfs can run out of metadata chunks
	xfs) mkfs.xfs -q -m reflink=1 "$img" ;;
	esac
	mkdir -p "$T/$kind"
	mount -o loop "$img" "$T/$kind" # autoclear: the loop device goes with the umount
}

lxc_config() { # LXCPATH NAME ROOTFS: the container dir lxc-create would have written
	mkdir -p "$1/$2"
	printf '%s\n' "lxc.uts.name = $2" "lxc.rootfs.path = $3" \
		"lxc.net.0.type = empty" "lxc.apparmor.profile = unconfined" >"$1/$2/config"
	track_lxc "$1" "$2"
}

berth_source() { # BACKEND POOL [create args]: the berth source container of a backend
	local name=$1-src pool=$2
	shift 2
	track_berth "$name"
	b create "$name" --pool "$pool" --from-dir "$ROOTFS" "$@"
}

berth_pool() { POOLS+=("$1"); b pool add "$@"; }

start_zfs() {
	zpool list >/dev/null 2>&1 && return 0
	# another session may start its daemon at the same moment: then ours exits
	zfs-fuse --pidfile "$T/zfs-fuse.pid" || true
	local i
	for i in $(seq 50); do zpool list >/dev/null 2>&1 && break; sleep 0.2; done
	zpool list >/dev/null 2>&1 || die "zfs-fuse does not answer"
	if [[ -s $T/zfs-fuse.pid ]] && kill -0 "$(cat "$T/zfs-fuse.pid")" 2>/dev/null; then
		ZFS_FUSE_PID=$(cat "$T/zfs-fuse.pid")
	fi
}

SET_UP=" "
setup() { # BACKEND
	[[ $SET_UP == *" $1 "* ]] && return 0
	local L
	case $1 in
	dir)
		make_fs ext4
		berth_pool cmp-dir -B dir --path "$T/ext4/berth-dir"
		berth_source dir cmp-dir
		L=$T/ext4/lxc
		lxc_config "$L" dir-src "dir:$L/dir-src/rootfs"
		cp -a "$ROOTFS" "$L/dir-src/rootfs"
		;;
	overlay) # both sides layer over the dir source, as `lxc-copy -s -B overlay` does
		setup dir
		berth_pool cmp-overlay -B overlay --path "$T/ext4/berth-overlay"
		track_berth overlay-src
		b clone dir-src overlay-src --snapshot --pool cmp-overlay
		track_lxc "$T/ext4/lxc" overlay-src
		lxc-copy "${LXC_LOG[@]}" -P "$T/ext4/lxc" -s -B overlay -n dir-src -N overlay-src
		;;
	btrfs)
		make_fs btrfs
		berth_pool cmp-btrfs -B btrfs --path "$T/btrfs/berth"
		# within one btrfs, lxc-copy and berth both "copy" by snapshotting: copies
		# go to a second one, so that both sides really copy data
		make_fs btrfs2
		berth_pool cmp-btrfs2 -B btrfs --path "$T/btrfs2/berth"
		mkdir -p "$T/btrfs2/lxc"
		berth_source btrfs cmp-btrfs
		L=$T/btrfs/lxc # LXC's btrfs rootfs is a subvolume at $lxcpath/NAME/rootfs
		lxc_config "$L" btrfs-src "btrfs:$L/btrfs-src/rootfs"
		btrfs -q subvolume create "$L/btrfs-src/rootfs"
		cp -a "$ROOTFS/." "$L/btrfs-src/rootfs/"
		;;
	loop) # same filesystem (ext4) and same image size on both sides
		make_fs xfs
		berth_pool cmp-loop -B loop --path "$T/xfs/berth" --fstype ext4 --size "${LOOP_MB}M"
		berth_source loop cmp-loop --size "${LOOP_MB}M"
		L=$T/xfs/lxc # LXC's loop rootfs is an image at $lxcpath/NAME/rootdev
		lxc_config "$L" loop-src "loop:$L/loop-src/rootdev"
		truncate -s "${LOOP_MB}M" "$L/loop-src/rootdev"
		mkfs.ext4 -q -F "$L/loop-src/rootdev"
		mkdir -p "$T/fill"
		mount -o loop "$L/loop-src/rootdev" "$T/fill"
		cp -a "$ROOTFS/." "$T/fill/"
		umount "$T/fill"
		;;
	zfs)
		start_zfs
		ZPOOL=cmplxc$$
		truncate -s 4G "$T/zfs.img"
		zpool create -o cachefile=none -m none "$ZPOOL" "$T/zfs.img"
		berth_pool cmp-zfs -B zfs --dataset "$ZPOOL/berth" --path "$T/zmnt"
		berth_source zfs cmp-zfs
		# LXC wants the container's name as the dataset's last component
		L=$T/zfs-lxc
		zfs create -o mountpoint=none "$ZPOOL/lxc"
		lxc_config "$L" zfs-src "zfs:$ZPOOL/lxc/zfs-src"
		zfs create -o mountpoint="$L/zfs-src/rootfs" "$ZPOOL/lxc/zfs-src"
		cp -a "$ROOTFS/." "$L/zfs-src/rootfs/"
		;;
	esac
	SET_UP+="$1 "
}

# ---- measuring ---------------------------------------------------------------------
declare -A SAMPLES=() FAIL=() MADE=()

lxc_path() {
	case $1 in dir | overlay) echo "$T/ext4/lxc" ;; btrfs) echo "$T/btrfs/lxc" ;;
	loop) echo "$T/xfs/lxc" ;; zfs) echo "$T/zfs-lxc" ;; esac
}

reason() { # SIDE OUTFILE RC: the first error line, shortened
	local msg
	if [[ $1 == lxc ]]; then
		# the root cause is the line with an errno ("No such device - ..."), if any
		msg=$({ grep -E '^lxc-[a-z]+: .*: [0-9]+ [A-Z][A-Za-z ]+ - ' "$2"; grep -E '^lxc-[a-z]+: ' "$2"; } |
			head -n 1 | sed -E 's/^.*lxc-[a-z]+: [^:]+: [^:]+: [^:]+: [0-9]+ //; s/ on "[^"]*lxc\/rootfs"//') || true
		# LXC's zfs driver mounts with type "zfs"; zfs-fuse gives the kernel none
		if grep -q 'storage/zfs.c' "$2" && grep -qE 'Failed (to )?mount' "$2" && ! grep -qw zfs /proc/filesystems; then
			msg="cannot mount zfs-fuse datasets: LXC mounts type \"zfs\", the kernel has none (ENODEV)"
		fi
	else
		msg=$(grep -m1 'error:' "$2" | sed -E 's/.*error: //; s/;.*//') || true
	fi
	[[ -n $msg ]] || msg=$(grep -m1 . "$2") || msg="exit status $3"
	msg=${msg:0:100}
	if grep -qiE 'not support|can only be used|cannot be snapshotted|cannot snapshot|refus' <<<"$msg"; then
		echo "refused ($msg)"
	else
		echo "fails ($msg)"
	fi
}

label() { case $1 in copy) echo copy ;; snap) echo "snapshot clone" ;; start) echo "start /bin/true" ;;
	dcopy) echo "destroy copy" ;; dsnap) echo "destroy clone" ;; esac; }

# run_op SIDE BACKEND OP: one timed run of one side of one operation
run_op() {
	local side=$1 bk=$2 op=$3 key="$2|$3|$1" L src=$2-src dst=$2-cp pool=cmp-$2 newpath
	[[ -z ${FAIL[$key]:-} ]] || return 0 # failed once: shown as such, not retried
	L=$(lxc_path "$bk")
	newpath=$L
	[[ $op == snap || $op == dsnap ]] && dst=$bk-sn
	[[ $bk == overlay && $op == snap ]] && src=dir-src
	if [[ $bk == btrfs && ($op == copy || $op == dcopy) ]]; then
		pool=cmp-btrfs2 newpath=$T/btrfs2/lxc
		[[ $op == dcopy ]] && L=$newpath
	fi
	local cmd=()
	case $side/$op in
	berth/copy) cmd=("${BERTH_CMD[@]}" clone "$src" "$dst" --copy --pool "$pool") ;;
	lxc/copy) cmd=(lxc-copy "${LXC_LOG[@]}" -P "$L" -p "$newpath" -n "$src" -N "$dst" -B "$bk") ;;
	berth/snap) cmd=("${BERTH_CMD[@]}" clone "$src" "$dst" --snapshot --pool "cmp-$bk") ;;
	lxc/snap) cmd=(lxc-copy "${LXC_LOG[@]}" -P "$L" -s -n "$src" -N "$dst" -B "$bk") ;;
	berth/start) cmd=("${BERTH_CMD[@]}" run --no-tty "$src" -- /bin/true) ;;
	lxc/start) cmd=(lxc-execute "${LXC_LOG[@]}" -P "$L" -n "$src" -- /bin/true) ;;
	berth/dcopy | berth/dsnap) cmd=("${BERTH_CMD[@]}" destroy "$dst") ;;
	lxc/dcopy | lxc/dsnap) cmd=(lxc-destroy "${LXC_LOG[@]}" -P "$L" -n "$dst") ;;
	esac
	if [[ $bk == loop && $op == copy ]]; then # the same image size on both sides
		if [[ $side == berth ]]; then cmd+=(--size "${LOOP_MB}M"); else cmd+=(-L "${LOOP_MB}M"); fi
	fi
	case $op in # a destroy needs this run's clone
	dcopy | dsnap)
		local made="$bk|${op#d}|$side"
		if [[ -z ${MADE[$made]:-} ]]; then
			FAIL[$key]="n/a (no $(label "${op#d}"))"
			return 0
		fi
		unset "MADE[$made]"
		;;
	copy | snap)
		if [[ $side == berth ]]; then track_berth "$dst"; else track_lxc "$newpath" "$dst"; fi
		;;
	esac
	local t0 t1 rc=0
	t0=${EPOCHREALTIME/./}
	"${cmd[@]}" >"$T/out" 2>&1 || rc=$?
	t1=${EPOCHREALTIME/./}
	if ((rc == 0)); then SAMPLES[$key]+=" $((t1 - t0))" MADE[$key]=1 && return 0; fi
	FAIL[$key]=$(reason "$side" "$T/out" "$rc")
	# a failed clone can leave a config, a dataset or a snapshot behind: clear it
	if [[ $op == copy || $op == snap ]]; then
		if [[ $side == berth ]]; then b_quiet destroy -f "$dst" || true
		else lxc-destroy "${LXC_LOG[@]}" -f -P "$newpath" -n "$dst" >/dev/null 2>&1 || true; fi
	fi
}

median_ms() { # microsecond samples → median in ms
	tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -n |
		awk '{ a[NR] = $1 } END { if (NR) printf "%.1f", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) / 1000 }'
}

what() { # BACKEND OP: what each side of the pair does
	case $1/$2 in
	dir/copy) echo "berth: copies the tree; lxc: rsync" ;;
	dir/snap) echo "dir cannot share data: see the overlay row" ;;
	overlay/copy) echo "berth: copies the overlay clone's layers into a new overlay volume" ;;
	overlay/snap) echo "both: an overlay layer over the dir source (lxc -s -B overlay)" ;;
	overlay/start) echo "on the overlay clone; berth confined; lxc bare config (no /proc, seccomp, cap drop)" ;;
	btrfs/copy) echo "into a 2nd btrfs, both copy files (within one, both would snapshot)" ;;
	btrfs/snap) echo "both: btrfs subvolume snapshot" ;;
	loop/copy) echo "berth: copies the image (reflinked on xfs); lxc: mkfs.ext4 ${LOOP_MB}M + rsync" ;;
	loop/snap) echo "berth: reflinked image on xfs" ;;
	zfs/copy) echo "berth: zfs send | recv; lxc: new dataset + rsync" ;;
	zfs/snap) echo "both: zfs snapshot + clone" ;;
	*/start) echo "berth confined (seccomp, caps); lxc bare config (no /proc, seccomp, cap drop)" ;;
	*) echo "" ;;
	esac
}

# ---- the run -----------------------------------------------------------------------
say "berth: $BERTH; runs: $RUNS; backends: ${SELECTED[*]}; temp: $T"
case $ROOTFS_KIND in
minimal | debootstrap)
	track_berth base
	if [[ $ROOTFS_KIND == minimal ]]; then b create base; else b create base -t debootstrap; fi
	mnt=$("${BERTH_CMD[@]}" mount base | tail -n 1)
	mkdir -p "$T/rootfs"
	cp -a "$mnt/." "$T/rootfs/"
	b umount base
	ROOTFS=$T/rootfs
	;;
*) ROOTFS=$(realpath "$ROOTFS_KIND") ;;
esac
ROOT_MB=$(du -sm "$ROOTFS" | cut -f1)
LOOP_MB=$((ROOT_MB + ROOT_MB / 4 + 64)) # berth's own default size for a copy into loop
say "rootfs: $ROOTFS ($ROOT_MB MiB)"

OPS=(copy snap start dcopy dsnap)
for bk in "${SELECTED[@]}"; do
	say "setting up $bk"
	setup "$bk"
	for ((r = 1; r <= RUNS; r++)); do
		say "$bk: run $r/$RUNS"
		for op in "${OPS[@]}"; do
			if ((r % 2)); then sides=(berth lxc); else sides=(lxc berth); fi
			for s in "${sides[@]}"; do run_op "$s" "$bk" "$op"; done
		done
	done
done

echo
echo "berth $("$BERTH" --version | awk '{ print $NF }') vs $(lxc-copy --version 2>/dev/null | sed 's/^/LXC /'); rootfs $ROOTFS_KIND ($ROOT_MB MiB); medians of $RUNS runs, ms"
fmt='%-8s %-16s %9s %9s %9s  %s\n'
# shellcheck disable=SC2059 # the format is ours
printf "$fmt" BACKEND OPERATION BERTH_MS LXC_MS BERTH/LXC NOTE
for bk in "${SELECTED[@]}"; do
	for op in "${OPS[@]}"; do
		bm=$(median_ms "${SAMPLES[$bk|$op|berth]:-}")
		lm=$(median_ms "${SAMPLES[$bk|$op|lxc]:-}")
		ratio=-
		[[ -n $bm && -n $lm ]] && ratio=$(awk -v a="$bm" -v b="$lm" 'BEGIN { printf (b > 0 ? "%.2f" : "-"), a / (b > 0 ? b : 1) }')
		note=()
		[[ -z ${FAIL[$bk|$op|berth]:-} ]] || note+=("berth: ${FAIL[$bk|$op|berth]}")
		[[ -z ${FAIL[$bk|$op|lxc]:-} ]] || note+=("lxc: ${FAIL[$bk|$op|lxc]}")
		w=$(what "$bk" "$op")
		[[ -z $w ]] || note+=("$w")
		joined=$(printf '%s; ' "${note[@]}")
		# shellcheck disable=SC2059
		printf "$fmt" "$bk" "$(label "$op")" "${bm:--}" "${lm:--}" "$ratio" "${joined%; }"
	done
done
