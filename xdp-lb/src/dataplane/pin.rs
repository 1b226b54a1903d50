//! Pinned state: the maps that must outlive the process (flow table, NAT reply state,
//! services, backends, tables, counters) live under bpffs in `<pin-dir>/v<LAYOUT>/`,
//! and the XDP links in `<pin-dir>/link-<iface>`. A restarted daemon adopts both:
//! the maps through `EbpfLoader::map_pin_path` (aya opens a pinned map instead of
//! creating one), the links through `bpf_link_update`, which swaps the program on
//! the interface in one step. Before anything is adopted, every pinned map is
//! checked against what this binary would create, and the LAYOUT record against
//! the configuration, so state is never misread. The differences adopted anyway are
//! a counter array with another number of entries (a version that counts more
//! verdict reasons), whose values are copied into a map of the new size
//! (`MIGRATABLE`), and another `flow_table_size`, whose flow tables' entries are
//! copied the same way (`RESIZABLE_FLOWS`).
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues};
use xdp_lb_common::{
    Counters, FlowKey, FlowValue, Layout, NatReverse, LAYOUT_MAGIC, LAYOUT_VERSION,
};

use super::{DataplaneError, MapSizes};

/// Where pinned state lives unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdp-lb";
/// The mount point `run` mounts bpffs on when a pin directory under it has none.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Maps pinned and adopted across restarts. NEXTHOPS (a cache with a TTL) and
/// TX_PORTS (filled by every attach) are rebuilt by each run, and the benchmark maps
/// are not used by `run`.
pub const PINNED_MAPS: [&str; 15] = [
    "SERVICES",
    "BACKENDS",
    "MAGLEV_RING",
    "FLOWS",
    "BACKEND_REPLIES",
    "NAT_REVERSE",
    // Flows that have sent one packet (the SYN-flood table): a handshake in progress
    // at a restart completes.
    "EMBRYOS",
    "EMBRYO_REVERSE",
    "EMBRYO_SLOTS",
    "SERVICE_STATS",
    "BACKEND_STATS",
    "GLOBAL_STATS",
    "LAYOUT",
    "BACKEND_OWNERS",
    // Least-conn counts of the adopted flows (the round-robin cursors start afresh).
    "CONNS",
];

/// Pinned maps whose size may differ between versions and that are migrated by
/// copying rather than refused: the per-CPU counter arrays, indexed by verdict
/// reason, service id or backend id. Reasons are only ever appended (never
/// renumbered), so entry i means the same in both layouts; a larger array gets
/// zeroed new entries, a smaller one keeps the first entries.
const MIGRATABLE: [&str; 3] = ["GLOBAL_STATS", "SERVICE_STATS", "BACKEND_STATS"];

/// Pinned flow tables copied into tables of the new size when `flow_table_size`
/// changed: established flows and their reverse NAT entries carry on, as at any
/// restart. A smaller table keeps as many as fit (the LRU evicts the first copied).
const RESIZABLE_FLOWS: [&str; 2] = ["FLOWS", "NAT_REVERSE"];

/// Pinned maps replaced by an empty one when their number of entries differs (a
/// version that sizes them otherwise, `embryo_table_size`): the embryonic tables hold
/// only flows that have sent one packet, and such a flow's next packet is dispatched
/// afresh, to the same backend unless the service's table changed meanwhile.
/// Versions before EMBRYO_SLOTS left no such pin: an empty one is made.
const REPLACEABLE: [&str; 3] = ["EMBRYOS", "EMBRYO_REVERSE", "EMBRYO_SLOTS"];

/// Pinned maps adopted as they are when made with exactly the configured number of
/// entries (`earlier_entries`): versions before `hash_table_entries` created the flow
/// tables that way (half the buckets). Their flows, established and embryonic, are
/// kept; `--fresh` remakes them with the current sizing, dropping the flows.
const EARLIER_SIZING: [&str; 4] = ["FLOWS", "NAT_REVERSE", "EMBRYOS", "EMBRYO_REVERSE"];

/// The entries an earlier version created `name` with, for `EARLIER_SIZING`.
fn earlier_entries(name: &str, sizes: &MapSizes) -> Option<u32> {
    match name {
        "FLOWS" | "NAT_REVERSE" => Some(sizes.flow_table_size),
        "EMBRYOS" | "EMBRYO_REVERSE" => {
            Some(xdp_lb_common::embryo_table_size(sizes.flow_table_size))
        }
        _ => None,
    }
}

/// Counter values read from a pinned map of another size, to be written into the
/// map this binary creates in its place.
pub struct Migration {
    pub map: &'static str,
    pub from_entries: u32,
    pub to_entries: u32,
    values: MigratedValues,
}

enum MigratedValues {
    Reasons(Vec<PerCpuValues<u64>>),
    Counters(Vec<PerCpuValues<Counters>>),
    /// The pinned flow table itself (its descriptor keeps it alive once unpinned),
    /// copied entry by entry when written: no second copy of millions of flows in
    /// memory. The running program keeps writing it until the new one takes over;
    /// what it writes after the copy is lost (those flows are dispatched afresh).
    Flows(MapData),
    Reverse(MapData),
}

impl Migration {
    /// Reads the first `min(from, to)` entries of the pinned map at `path`.
    fn read(map: &'static str, path: &Path, from: u32, to: u32) -> Result<Self, DataplaneError> {
        let err = |source| DataplaneError::Map { map, source };
        let data = MapData::from_pin(path).map_err(err)?;
        let n = from.min(to);
        let values = if map == "FLOWS" {
            MigratedValues::Flows(data)
        } else if map == "NAT_REVERSE" {
            MigratedValues::Reverse(data)
        } else if map == "GLOBAL_STATS" {
            let a: PerCpuArray<MapData, u64> =
                PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(err)?;
            MigratedValues::Reasons(
                (0..n)
                    .map(|i| a.get(&i, 0))
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
            )
        } else {
            let a: PerCpuArray<MapData, Counters> =
                PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).map_err(err)?;
            MigratedValues::Counters(
                (0..n)
                    .map(|i| a.get(&i, 0))
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
            )
        };
        Ok(Migration {
            map,
            from_entries: from,
            to_entries: to,
            values,
        })
    }

    /// Writes the saved values into `map`, the one this binary created. Returns how
    /// many entries were copied.
    pub fn write(self, map: &mut aya::maps::Map) -> Result<u64, DataplaneError> {
        let name = self.map;
        let err = |source| DataplaneError::Map { map: name, source };
        match self.values {
            MigratedValues::Reasons(v) => {
                let mut a: PerCpuArray<&mut MapData, u64> =
                    PerCpuArray::try_from(map).map_err(err)?;
                for (i, values) in (0u32..).zip(v) {
                    a.set(i, values, 0).map_err(err)?;
                }
            }
            MigratedValues::Counters(v) => {
                let mut a: PerCpuArray<&mut MapData, Counters> =
                    PerCpuArray::try_from(map).map_err(err)?;
                for (i, values) in (0u32..).zip(v) {
                    a.set(i, values, 0).map_err(err)?;
                }
            }
            MigratedValues::Flows(old) => return copy_entries::<FlowValue>(name, old, map),
            MigratedValues::Reverse(old) => return copy_entries::<NatReverse>(name, old, map),
        }
        Ok(u64::from(self.from_entries.min(self.to_entries)))
    }
}

/// Copies every entry of the flow table `old` (keyed by `FlowKey`) into `new`. An
/// entry gone between the key walk and its read (evicted, closed) is skipped.
fn copy_entries<V: aya::Pod>(
    name: &'static str,
    old: MapData,
    new: &mut aya::maps::Map,
) -> Result<u64, DataplaneError> {
    let err = |source| DataplaneError::Map { map: name, source };
    let old: HashMap<MapData, FlowKey, V> =
        HashMap::try_from(aya::maps::Map::LruHashMap(old)).map_err(err)?;
    let mut new: HashMap<&mut MapData, FlowKey, V> = HashMap::try_from(new).map_err(err)?;
    let mut copied = 0;
    for (k, v) in old.iter().filter_map(Result::ok) {
        new.insert(k, v, 0).map_err(err)?;
        copied += 1;
    }
    Ok(copied)
}

/// How `run` treats pinned state.
#[derive(Debug, Clone)]
pub struct PinOptions {
    /// Base directory; maps go to `dir/v<LAYOUT_VERSION>`, links to `dir/link-<iface>`.
    pub dir: PathBuf,
    /// Drop whatever is pinned and start from empty maps.
    pub fresh: bool,
    /// Configuration values recorded in the LAYOUT record (they position tables in
    /// MAGLEV_RING, so a restart must use the same ones).
    pub max_services: u32,
    pub max_table_size: u32,
}

impl PinOptions {
    /// The directory of this binary's map layout.
    pub fn map_dir(&self) -> PathBuf {
        layout_dir(&self.dir)
    }

    /// The LAYOUT record this run writes, or expects to find.
    pub fn layout(&self, sizes: &MapSizes) -> Layout {
        Layout {
            magic: LAYOUT_MAGIC,
            version: LAYOUT_VERSION,
            flow_table_size: sizes.flow_table_size,
            max_services: self.max_services,
            max_table_size: self.max_table_size,
            _pad: 0,
        }
    }
}

fn layout_dir(base: &Path) -> PathBuf {
    base.join(format!("v{LAYOUT_VERSION}"))
}

/// Path of the pinned XDP link of `iface`.
pub fn link_path(base: &Path, iface: &str) -> PathBuf {
    base.join(link_name(iface, false))
}

/// Path of the pinned tc (TCX) link of `iface`.
pub fn tc_link_path(base: &Path, iface: &str) -> PathBuf {
    base.join(link_name(iface, true))
}

/// File name of a pinned link: `link-<iface>` (XDP) or `tclink-<iface>` (tc). The
/// prefixes differ before their dash, so no interface name makes one read as the
/// other.
pub fn link_name(iface: &str, tc: bool) -> String {
    if tc {
        format!("tclink-{iface}")
    } else {
        format!("link-{iface}")
    }
}

/// The interface a pinned link's file name is for, XDP or tc.
fn link_iface(name: &str) -> Option<&str> {
    name.strip_prefix("link-")
        .or_else(|| name.strip_prefix("tclink-"))
}

/// Why pinned state cannot be adopted. Each names what differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutDiff {
    #[error("its layout record says version {pinned}, this binary uses layout {ours}")]
    Version { pinned: u32, ours: u32 },
    #[error(
        "it holds state of another layout version ({found}; this binary uses v{LAYOUT_VERSION})"
    )]
    OtherVersion { found: String },
    #[error("it was made with {key} = {pinned}, the configuration says {configured}")]
    Setting {
        key: &'static str,
        pinned: u32,
        configured: u32,
    },
    #[error("map {map}: {what} is {pinned} pinned but {ours} in this binary")]
    Map {
        map: &'static str,
        what: &'static str,
        pinned: u32,
        ours: u32,
    },
    #[error("it has no valid layout record (an interrupted first start, or not made by xdp-lb)")]
    NoRecord,
    #[error("map {0} is missing")]
    MissingMap(&'static str),
}

/// What `prepare` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing pinned (or `--fresh`): the loader creates and pins new maps.
    Nothing,
    /// Compatible pinned maps: the loader adopts them.
    Adoptable,
}

/// Makes sure `opts.dir` is on bpffs (mounting bpffs on /sys/fs/bpf if the directory
/// is under it and nothing is mounted there), then checks what is pinned.
/// With `fresh`, removes pinned maps of every layout (the links stay: the new
/// program replaces the old one through them, so the interface is never without one).
/// Also returns the lock on the pin directory, to hold while the run lasts.
pub fn prepare(
    opts: &PinOptions,
    sizes: &MapSizes,
) -> Result<(Found, Vec<Migration>, std::fs::File), DataplaneError> {
    ensure_bpffs(&opts.dir)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataplaneError::PinIo { path, source }
    };
    std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
    let lock = lock_dir(&opts.dir)?;
    prepare_locked(opts, sizes).map(|(found, migrations)| (found, migrations, lock))
}

/// Takes the pin directory's lock: two daemons on one pin directory would swap each
/// other's program out of the shared link and write the same maps.
fn lock_dir(dir: &Path) -> Result<std::fs::File, DataplaneError> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(dir).map_err(|source| DataplaneError::PinIo {
        path: dir.to_path_buf(),
        source,
    })?;
    // SAFETY: flock on a descriptor we own; the lock goes with the descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DataplaneError::PinDirInUse(dir.to_path_buf()));
        }
        return Err(DataplaneError::PinIo {
            path: dir.to_path_buf(),
            source: e,
        });
    }
    Ok(f)
}

fn prepare_locked(
    opts: &PinOptions,
    sizes: &MapSizes,
) -> Result<(Found, Vec<Migration>), DataplaneError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataplaneError::PinIo { path, source }
    };
    let ours = opts.map_dir();
    // Other layout versions: state this binary cannot read.
    for entry in std::fs::read_dir(&opts.dir).map_err(io(&opts.dir))? {
        let entry = entry.map_err(io(&opts.dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_layout_dir = name.len() > 1
            && name.starts_with('v')
            && name[1..].bytes().all(|b| b.is_ascii_digit());
        if !is_layout_dir || entry.path() == ours {
            continue;
        }
        if opts.fresh {
            log::info!("--fresh: removing pinned state of layout {name}");
            remove_pins(&entry.path())?;
        } else {
            return Err(DataplaneError::Incompatible {
                dir: opts.dir.clone(),
                diff: LayoutDiff::OtherVersion { found: name },
            });
        }
    }
    if !ours.exists() {
        std::fs::create_dir_all(&ours).map_err(io(&ours))?;
        return Ok((Found::Nothing, Vec::new()));
    }
    if opts.fresh {
        log::info!("--fresh: removing pinned maps in {}", ours.display());
        remove_pins(&ours)?;
        std::fs::create_dir_all(&ours).map_err(io(&ours))?;
        return Ok((Found::Nothing, Vec::new()));
    }
    let pinned: Vec<&'static str> = PINNED_MAPS
        .iter()
        .copied()
        .filter(|m| ours.join(m).exists())
        .collect();
    if pinned.is_empty() {
        return Ok((Found::Nothing, Vec::new()));
    }
    let incompatible = |diff| DataplaneError::Incompatible {
        dir: ours.clone(),
        diff,
    };
    let pinned_flow_table = check_record(&ours.join("LAYOUT"), &opts.layout(sizes))
        .map_err(incompatible)?
        .flow_table_size;
    if pinned_flow_table != sizes.flow_table_size {
        log::info!(
            "flow_table_size changes from {pinned_flow_table} to {}: the pinned flows are \
             copied into tables of the new size (flows created during the copy are \
             dispatched afresh), the embryonic tables start empty",
            sizes.flow_table_size
        );
    }
    let expected = expected_maps(sizes)?;
    let mut migrations = Vec::new();
    let mut replaced = Vec::new();
    for (name, want) in expected {
        let path = ours.join(name);
        if !path.exists() {
            if REPLACEABLE.contains(&name) {
                log::info!(
                    "{name}: not pinned (pins of an earlier version, or removed): \
                     an empty one is made"
                );
                continue;
            }
            return Err(incompatible(LayoutDiff::MissingMap(name)));
        }
        let info =
            MapInfo::from_pin(&path).map_err(|source| DataplaneError::Map { map: name, source })?;
        let got = MapShape {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        match adoption(name, &want, &got, sizes) {
            Adoption::AsItIs => {}
            Adoption::EarlierSizing => log::info!(
                "{name}: pinned with {} entries by an earlier version, adopted as it is \
                 (this version makes {} for twice the hash buckets; `--fresh` would, \
                 dropping established flows)",
                got.max_entries,
                want.max_entries
            ),
            Adoption::Replace => {
                log::info!(
                    "{name}: pinned with {} entries, this version makes {}: an empty one \
                     replaces it (flows that have sent one packet are dispatched afresh)",
                    got.max_entries,
                    want.max_entries
                );
                replaced.push(name);
            }
            Adoption::Migrate => migrations.push(Migration::read(
                name,
                &path,
                got.max_entries,
                want.max_entries,
            )?),
            Adoption::Refuse(diff) => return Err(incompatible(diff)),
        }
    }
    // Only once everything else is known to be adoptable: the loader creates and
    // pins these maps again at the new size, and `Migration::write` fills the
    // migrated ones.
    for name in migrations.iter().map(|m| m.map).chain(replaced) {
        let path = ours.join(name);
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    Ok((Found::Adoptable, migrations))
}

/// What becomes of one pinned map.
#[derive(Debug, PartialEq)]
enum Adoption {
    /// Same shape: used as it is.
    AsItIs,
    /// A flow or embryonic table as an earlier version sized it (`EARLIER_SIZING`):
    /// used as it is.
    EarlierSizing,
    /// An embryonic table of another size: an empty one replaces it.
    Replace,
    /// A counter array of another size: copied into a new one.
    Migrate,
    Refuse(LayoutDiff),
}

fn adoption(name: &'static str, want: &MapShape, got: &MapShape, sizes: &MapSizes) -> Adoption {
    let Some(diff) = want.diff(name, got) else {
        return Adoption::AsItIs;
    };
    if want.resized(EARLIER_SIZING.as_slice(), name, got)
        && earlier_entries(name, sizes) == Some(got.max_entries)
    {
        Adoption::EarlierSizing
    } else if want.resized(REPLACEABLE.as_slice(), name, got) {
        Adoption::Replace
    } else if want.resized(MIGRATABLE.as_slice(), name, got)
        || want.resized(RESIZABLE_FLOWS.as_slice(), name, got)
    {
        Adoption::Migrate
    } else {
        Adoption::Refuse(diff)
    }
}

/// The parts of a map definition that must match for a pinned map to be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MapShape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    /// `map_flags` (e.g. `BPF_F_NO_COMMON_LRU`, `BPF_F_NO_PREALLOC`): a table made with
    /// other flags behaves differently under the same key and value.
    flags: u32,
}

impl MapShape {
    /// A pinned map of `kinds` that differs from ours in its number of entries only.
    fn resized(&self, kinds: &[&str], map: &str, pinned: &MapShape) -> bool {
        kinds.contains(&map)
            && MapShape {
                max_entries: self.max_entries,
                ..*pinned
            } == *self
    }

    fn diff(&self, map: &'static str, pinned: &MapShape) -> Option<LayoutDiff> {
        let fields = [
            ("type", pinned.map_type, self.map_type),
            ("key size", pinned.key_size, self.key_size),
            ("value size", pinned.value_size, self.value_size),
            ("max_entries", pinned.max_entries, self.max_entries),
            ("flags", pinned.flags, self.flags),
        ];
        fields
            .into_iter()
            .find(|(_, p, o)| p != o)
            .map(|(what, pinned, ours)| LayoutDiff::Map {
                map,
                what,
                pinned,
                ours,
            })
    }
}

/// What the embedded object would create for each pinned map, with the sizes the
/// configuration sets at load: read from the object itself, so a map changed in the
/// eBPF crate is compared as it is built.
fn expected_maps(sizes: &MapSizes) -> Result<Vec<(&'static str, MapShape)>, DataplaneError> {
    let obj = aya_obj::Object::parse(super::EBPF_OBJECT).map_err(DataplaneError::Parse)?;
    PINNED_MAPS
        .iter()
        .map(|&name| {
            let m = obj.maps.get(name).ok_or(DataplaneError::Missing(name))?;
            let max_entries = match name {
                "MAGLEV_RING" => sizes.ring_entries.max(1),
                "FLOWS" | "NAT_REVERSE" => super::bpf::flow_entries(*sizes),
                "EMBRYOS" | "EMBRYO_REVERSE" => super::bpf::embryo_entries(*sizes),
                "EMBRYO_SLOTS" => xdp_lb_common::embryo_slots(sizes.flow_table_size),
                _ => m.max_entries(),
            };
            Ok((
                name,
                MapShape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries,
                    flags: m.map_flags(),
                },
            ))
        })
        .collect()
}

/// Reads the pinned LAYOUT record and compares it with what this run needs, but for
/// `flow_table_size`, which may change (`RESIZABLE_FLOWS`). Returns the record.
fn check_record(path: &Path, want: &Layout) -> Result<Layout, LayoutDiff> {
    let got = read_record(path).ok_or(LayoutDiff::NoRecord)?;
    let want = Layout {
        flow_table_size: got.flow_table_size,
        ..*want
    };
    layout_diff(&got, &want).map_or(Ok(got), Err)
}

fn read_record(path: &Path) -> Option<Layout> {
    let data = MapData::from_pin(path).ok()?;
    let arr: Array<MapData, Layout> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
    arr.get(&0, 0).ok()
}

/// The first difference between a pinned LAYOUT record and the wanted one.
pub fn layout_diff(got: &Layout, want: &Layout) -> Option<LayoutDiff> {
    if got.magic != LAYOUT_MAGIC {
        return Some(LayoutDiff::NoRecord);
    }
    if got.version != want.version {
        return Some(LayoutDiff::Version {
            pinned: got.version,
            ours: want.version,
        });
    }
    [
        ("flow_table_size", got.flow_table_size, want.flow_table_size),
        ("max_services", got.max_services, want.max_services),
        ("max_table_size", got.max_table_size, want.max_table_size),
    ]
    .into_iter()
    .find(|(_, p, c)| p != c)
    .map(|(key, pinned, configured)| LayoutDiff::Setting {
        key,
        pinned,
        configured,
    })
}

/// Mounts bpffs on /sys/fs/bpf if `dir` is under it and it is not bpffs yet;
/// refuses any other directory that is not on bpffs.
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let probe = nearest_existing(dir);
    if fs_magic(&probe) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let root = Path::new(BPFFS_ROOT);
    if !dir.starts_with(root) || fs_magic(root) == Some(BPF_FS_MAGIC) {
        return Err(DataplaneError::NotBpffs(dir.to_path_buf()));
    }
    let target = CString::new(root.as_os_str().as_bytes()).expect("no NUL in a constant");
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::BpffsMount {
            dir: root.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    log::info!("mounted a bpf file system on {BPFFS_ROOT} for the pinned state");
    if !same_mount_ns_as_init() {
        log::warn!(
            "this process runs in its own mount namespace (e.g. under `ip netns exec`): the bpf file system mounted on {BPFFS_ROOT} disappears with it, and the pinned state too; give --pin-dir on a bpf file system mounted in the host's namespace"
        );
    }
    Ok(())
}

fn nearest_existing(dir: &Path) -> PathBuf {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

fn fs_magic(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's integer type differs between libc targets"
    )]
    (rc == 0).then_some(st.f_type as i64)
}

fn same_mount_ns_as_init() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

/// Removes every pin in `dir` (files only: pinned maps) and the directory.
fn remove_pins(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_dir_all(dir).map_err(|source| DataplaneError::PinIo {
        path: dir.to_path_buf(),
        source,
    })
}

/// What `detach` removed.
#[derive(Debug, Default)]
pub struct Detached {
    /// Interfaces whose link was detached.
    pub links: Vec<String>,
    /// Layout directories of pinned maps removed.
    pub layouts: Vec<String>,
}

/// `xdp-lb detach`: detaches every pinned link (BPF_LINK_DETACH, so it takes effect
/// even while a daemon still holds the link), then removes every pin and the
/// directory. Without pinned state it removes nothing and says so.
pub fn detach(dir: &Path) -> Result<Detached, DataplaneError> {
    let mut done = Detached::default();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataplaneError::PinIo { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(io(dir)(e)),
    };
    let _lock = lock_dir(dir)?;
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if let Some(iface) = link_iface(&name) {
            force_detach_link(&path)?;
            std::fs::remove_file(&path).map_err(io(&path))?;
            done.links.push(iface.to_string());
        } else if entry.file_type().map_err(io(&path))?.is_dir() {
            remove_pins(&path)?;
            done.layouts.push(name);
        }
    }
    std::fs::remove_dir(dir).map_err(io(dir))?;
    Ok(done)
}

/// Detaches and unpins the links this run does not keep (`keep`: link file names,
/// see `link_name`): interfaces removed from the configuration while the daemon was
/// down, and the other program type's link where the attach mode changed, so an
/// interface never runs both.
pub fn detach_other_links(dir: &Path, keep: &[String]) -> Result<(), DataplaneError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(iface) = link_iface(&name) else {
            continue;
        };
        if keep.contains(&name) {
            continue;
        }
        log::info!("{iface}: detaching the pinned program this run does not use ({name})");
        let path = entry.path();
        force_detach_link(&path)?;
        std::fs::remove_file(&path).map_err(|source| DataplaneError::PinIo { path, source })?;
    }
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Opens the pinned link and detaches it from its interface. A link whose interface
/// is gone (already defunct) counts as detached.
fn force_detach_link(path: &Path) -> Result<(), DataplaneError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| DataplaneError::PinIo {
        path: path.to_path_buf(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let err = |source| DataplaneError::PinIo {
        path: path.to_path_buf(),
        source,
    };
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr-sized buffer; the kernel reads `pathname`,
    // which points at `c`, alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    let fd = fd as i32;
    // bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd as u32);
    // SAFETY: as above; the kernel reads `link_fd` only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let detach_err = std::io::Error::last_os_error();
    // SAFETY: fd was returned by BPF_OBJ_GET above and is ours to close.
    unsafe { libc::close(fd) };
    if rc != 0 && detach_err.raw_os_error() != Some(libc::ENOLINK) {
        return Err(err(detach_err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want() -> Layout {
        Layout {
            magic: LAYOUT_MAGIC,
            version: LAYOUT_VERSION,
            flow_table_size: 1024,
            max_services: 4,
            max_table_size: 1009,
            _pad: 0,
        }
    }

    #[test]
    fn identical_records_match() {
        assert_eq!(layout_diff(&want(), &want()), None);
    }

    #[test]
    fn a_zeroed_record_is_no_record() {
        assert_eq!(
            layout_diff(&Layout::default(), &want()),
            Some(LayoutDiff::NoRecord)
        );
    }

    #[test]
    fn version_and_settings_are_named() {
        let got = Layout {
            version: LAYOUT_VERSION + 1,
            ..want()
        };
        assert_eq!(
            layout_diff(&got, &want()),
            Some(LayoutDiff::Version {
                pinned: LAYOUT_VERSION + 1,
                ours: LAYOUT_VERSION
            })
        );
        let got = Layout {
            flow_table_size: 2048,
            ..want()
        };
        let diff = layout_diff(&got, &want()).unwrap();
        assert_eq!(
            diff.to_string(),
            "it was made with flow_table_size = 2048, the configuration says 1024"
        );
    }

    #[test]
    fn only_counter_arrays_that_changed_size_are_migratable() {
        let ours = MapShape {
            map_type: 6,
            key_size: 4,
            value_size: 8,
            max_entries: 28,
            flags: 0,
        };
        let fewer = MapShape {
            max_entries: 24,
            ..ours
        };
        assert!(ours.resized(&MIGRATABLE, "GLOBAL_STATS", &fewer));
        assert!(
            !ours.resized(&MIGRATABLE, "FLOWS", &fewer),
            "not a counter array"
        );
        let wider = MapShape {
            value_size: 16,
            ..fewer
        };
        assert!(
            !ours.resized(&MIGRATABLE, "GLOBAL_STATS", &wider),
            "a changed value shape is refused"
        );
    }

    #[test]
    fn tables_of_the_earlier_sizing_are_adopted_and_of_another_size_copied() {
        let sizes = MapSizes {
            ring_entries: 1,
            flow_table_size: 4096,
        };
        let ours = MapShape {
            map_type: 9,
            key_size: 40,
            value_size: 32,
            max_entries: super::super::bpf::flow_entries(sizes),
            flags: 0,
        };
        assert_eq!(ours.max_entries, 4097, "a power of two gets one more entry");
        assert_eq!(adoption("FLOWS", &ours, &ours, &sizes), Adoption::AsItIs);
        let earlier = MapShape {
            max_entries: 4096,
            ..ours
        };
        for name in ["FLOWS", "NAT_REVERSE"] {
            assert_eq!(
                adoption(name, &ours, &earlier, &sizes),
                Adoption::EarlierSizing
            );
        }
        // Another size (another flow_table_size): the flows are copied.
        let other = MapShape {
            max_entries: 8192,
            ..ours
        };
        for name in ["FLOWS", "NAT_REVERSE"] {
            assert_eq!(adoption(name, &ours, &other, &sizes), Adoption::Migrate);
        }
        assert!(matches!(
            adoption("BACKENDS", &ours, &other, &sizes),
            Adoption::Refuse(_)
        ));
        let wider = MapShape {
            value_size: 48,
            ..earlier
        };
        assert!(matches!(
            adoption("FLOWS", &ours, &wider, &sizes),
            Adoption::Refuse(_)
        ));
        // An embryonic table of the earlier sizing is adopted too (handshakes in
        // progress complete); one of any other size is replaced by an empty one.
        let embryos = MapShape {
            max_entries: super::super::bpf::embryo_entries(sizes),
            ..ours
        };
        let embryos_earlier = MapShape {
            max_entries: 1024,
            ..ours
        };
        assert_eq!(embryos.max_entries, 1025);
        for name in ["EMBRYOS", "EMBRYO_REVERSE"] {
            assert_eq!(
                adoption(name, &embryos, &embryos_earlier, &sizes),
                Adoption::EarlierSizing
            );
        }
        let embryos_other = MapShape {
            max_entries: 2048,
            ..ours
        };
        assert_eq!(
            adoption("EMBRYOS", &embryos, &embryos_other, &sizes),
            Adoption::Replace
        );
    }

    #[test]
    fn only_embryonic_tables_of_another_size_are_replaced() {
        let ours = MapShape {
            map_type: 9,
            key_size: 40,
            value_size: 32,
            max_entries: 1 << 18,
            flags: 0,
        };
        let larger = MapShape {
            max_entries: 1 << 21,
            ..ours
        };
        assert!(ours.resized(&REPLACEABLE, "EMBRYOS", &larger));
        assert!(ours.resized(&REPLACEABLE, "EMBRYO_REVERSE", &larger));
        assert!(
            !ours.resized(&REPLACEABLE, "FLOWS", &larger),
            "established flows are never dropped"
        );
        let wider = MapShape {
            value_size: 48,
            ..larger
        };
        assert!(
            !ours.resized(&REPLACEABLE, "EMBRYOS", &wider),
            "another entry layout is refused"
        );
    }

    #[test]
    fn map_shapes_name_the_first_difference() {
        let ours = MapShape {
            map_type: 9,
            key_size: 40,
            value_size: 24,
            max_entries: 1024,
            flags: 0,
        };
        assert_eq!(ours.diff("FLOWS", &ours), None);
        let pinned = MapShape {
            value_size: 32,
            max_entries: 2048,
            ..ours
        };
        assert_eq!(
            ours.diff("FLOWS", &pinned),
            Some(LayoutDiff::Map {
                map: "FLOWS",
                what: "value size",
                pinned: 32,
                ours: 24
            })
        );
        // BPF_F_NO_COMMON_LRU: same key, value and size, another table.
        let per_cpu_lru = MapShape { flags: 2, ..ours };
        assert_eq!(
            ours.diff("FLOWS", &per_cpu_lru),
            Some(LayoutDiff::Map {
                map: "FLOWS",
                what: "flags",
                pinned: 2,
                ours: 0
            })
        );
        assert!(
            !ours.resized(
                &REPLACEABLE,
                "EMBRYOS",
                &MapShape {
                    max_entries: 4096,
                    ..per_cpu_lru
                }
            ),
            "other flags are not a resize"
        );
    }
}
