//! The aya implementation of `Dataplane`: loads the embedded XDP object with maps
//! sized from the configuration, attaches it to interfaces, performs a `Plan`'s map
//! writes in order, and reads the counters back.
use std::path::PathBuf;

use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use xdp_lb_common::{
    embryo_check, embryo_slots, embryo_table_size, endpoint_bit, hash::flow_hash,
    hash_table_entries, reason, slot_scheduled, Backend, Counters, EmbryoSlot, FlowKey, FlowValue,
    Layout, NatReverse, ReplyTarget, Service, ServiceEntry, ServiceKey, ENDPOINT_FILTER_WORDS,
    MAX_BACKENDS, SLOT_CONF_GUARD, SLOT_CONF_MASK, SLOT_GUARD_UNITS, SVC_FWD_DSR,
};

use super::{
    pin::{self, Found, PinOptions},
    Dataplane, DataplaneError, FlowCounts, MapSizes,
};
use crate::{
    config,
    plan::{Plan, Snapshot},
};

/// What one `AyaDataplane::test_run` gave back.
#[derive(Debug)]
pub struct TestRunOutcome {
    /// The XDP action the program returned (for the last iteration).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Mean time per iteration, as the kernel reports it (whole nanoseconds).
    pub per_run: std::time::Duration,
}

/// The XDP object built from xdp-lb-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-lb-ebpf"));

/// Name of the balancer program in the object.
pub const PROGRAM: &str = "xdp_lb";
/// The same balancer as a tc classifier (`--attach tc`).
pub const TC_PROGRAM: &str = "tc_lb";
/// Attempts at loading a program whose verification was interrupted (EAGAIN).
const LOAD_TRIES: u32 = 5;

/// Name of the pass-everything program for veth peers.
pub const PASS_PROGRAM: &str = "xdp_pass";

/// The real data plane: the loaded object and the interfaces it is attached to.
pub struct AyaDataplane {
    ebpf: Ebpf,
    attached: Vec<(String, &'static str)>,
    /// Base pin directory when the maps are pinned: attaching then pins (or adopts)
    /// a link per interface there.
    pin_dir: Option<PathBuf>,
    /// Links this run created and pinned; dropping them only closes our descriptor.
    pinned_links: Vec<PinnedLink>,
    /// The pin directory's lock, held as long as this run uses it.
    _pin_lock: Option<std::fs::File>,
    /// Reader of the program's rare-event log lines; holds the ring buffer's only
    /// fd, so it lives as long as the programs may be (re)loaded.
    kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Looks up an interface index; `None` if there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// A removal whose key is already gone has done its job. aya reports that as the
/// delete syscall's ENOENT, not as KeyNotFound.
fn absent(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

/// The outcome of swapping a program into the link pinned at `path` (`kind`: "" for
/// XDP, "tc " for tc): true when swapped; false when the link outlived its interface
/// (deleted and re-created), after removing the dead pin, so the caller attaches anew.
fn link_swapped(
    iface: &str,
    kind: &str,
    path: &std::path::Path,
    swapped: Result<(), aya::programs::ProgramError>,
) -> Result<bool, DataplaneError> {
    match swapped {
        Ok(()) => {
            log::info!("{iface}: replaced the {kind}program on the pinned link in place");
            Ok(true)
        }
        Err(e) if os_error(&e) == Some(libc::ENOLINK) => {
            log::info!(
                "{iface}: the pinned {kind}link is defunct (interface re-created); attaching anew"
            );
            std::fs::remove_file(path).map_err(|source| DataplaneError::PinIo {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(false)
        }
        Err(source) => Err(DataplaneError::Attach {
            iface: iface.to_string(),
            mode: "replace",
            source,
        }),
    }
}

/// Loads a program through the verifier. The verifier gives up with EAGAIN as soon as
/// a signal is pending on the loading thread (a child's SIGCHLD, an operator's
/// SIGHUP), which a long verification of a busy process can meet every time; so the
/// thread blocks every signal while it loads (they are delivered to another thread,
/// or to this one right after), and still retries like libbpf in case one slips in.
fn verify(
    name: &'static str,
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), DataplaneError> {
    let mut tries = LOAD_TRIES;
    loop {
        let result = with_signals_blocked(&mut load);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if tries > 1 && os_error(&e) == Some(libc::EAGAIN) => {
                tries -= 1;
                log::debug!("{name}: verifier interrupted (EAGAIN), loading again");
            }
            Err(source) => return Err(DataplaneError::Program { name, source }),
        }
    }
}

/// Runs `f` with every blockable signal blocked on this thread, then restores the mask.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use; the masks are
    // this thread's own and restored before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0;
        let out = f();
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        out
    }
}

/// Entries FLOWS and NAT_REVERSE are created with (`hash_table_entries`: twice the
/// buckets for a power of two).
pub(crate) fn flow_entries(sizes: MapSizes) -> u32 {
    hash_table_entries(sizes.flow_table_size)
}

/// Entries EMBRYOS and EMBRYO_REVERSE are created with.
pub(crate) fn embryo_entries(sizes: MapSizes) -> u32 {
    hash_table_entries(embryo_table_size(sizes.flow_table_size))
}

/// A loader with the capacities the configuration sets at load.
fn sized_loader(sizes: MapSizes) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries("MAGLEV_RING", sizes.ring_entries.max(1))
        .map_max_entries("FLOWS", flow_entries(sizes))
        .map_max_entries("NAT_REVERSE", flow_entries(sizes))
        .map_max_entries("EMBRYOS", embryo_entries(sizes))
        .map_max_entries("EMBRYO_REVERSE", embryo_entries(sizes))
        .map_max_entries("EMBRYO_SLOTS", embryo_slots(sizes.flow_table_size));
    loader
}

/// The word of an endpoint bitmap (ENDPOINT_FILTER's shape) that holds the pair's
/// `endpoint_bit`, and the bit's mask in it.
fn endpoint_word(addr: &[u32; 4], port: u16) -> (u32, u64) {
    let bit = endpoint_bit(addr, port);
    (bit / 64, 1u64 << (bit % 64))
}

/// A service whose new flows are in EMBRYO_SLOTS only: hash-scheduled DSR. (A NAT
/// flow's entry may be moved to EMBRYOS by the slot's guard, and round-robin and
/// least-conn flows are there.) SLOT_ENDPOINTS's bits are those of such services.
fn slot_only(k: &ServiceKey, v: &Service) -> bool {
    slot_scheduled(v.flags, k.proto) && v.flags & SVC_FWD_DSR != 0
}

/// The flow a slot of EMBRYO_SLOTS holds, if it is whole (`embryo_check`).
fn slot_holds(s: &EmbryoSlot) -> Option<(FlowKey, FlowValue)> {
    (s.check != 0 && s.check == embryo_check(flow_hash(&s.key), &s.value))
        .then_some((s.key, s.value))
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl AyaDataplane {
    /// Loads the object and the balancer program; nothing is attached yet.
    pub fn load(sizes: MapSizes) -> Result<Self, DataplaneError> {
        Self::load_object(EBPF_OBJECT, sizes, &[])
    }

    /// `load` of `object` (another build's, in `cargo xtask bench pkt`'s A/B runs)
    /// with some maps' capacities replaced by `resize`; a name the object lacks
    /// changes nothing, so callers check the result with `map_info`.
    pub fn load_object(
        object: &[u8],
        sizes: MapSizes,
        resize: &[(&str, u32)],
    ) -> Result<Self, DataplaneError> {
        if object.is_empty() {
            return Err(DataplaneError::StubObject);
        }
        let mut loader = sized_loader(sizes);
        for (name, n) in resize {
            loader.map_max_entries(name, *n);
        }
        let mut ebpf = loader.load(object).map_err(DataplaneError::Load)?;
        let kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("the XDP program's log is not available: {e}");
                None
            }
        };
        let mut dp = AyaDataplane {
            ebpf,
            attached: Vec::new(),
            pin_dir: None,
            pinned_links: Vec::new(),
            _pin_lock: None,
            kernel_log,
        };
        dp.set_slot_conf()?;
        dp.load_program(PROGRAM)?;
        Ok(dp)
    }

    /// Loads the object with the maps of `pin::PINNED_MAPS` pinned in
    /// `opts.map_dir()`: adopted when compatible pinned maps are there (returns
    /// true), created and pinned otherwise. Incompatible pinned state is refused
    /// unless `opts.fresh`. Links made by `attach` are pinned too.
    pub fn load_pinned(sizes: MapSizes, opts: &PinOptions) -> Result<(Self, bool), DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::StubObject);
        }
        let (found, migrations, lock) = pin::prepare(opts, &sizes)?;
        let map_dir = opts.map_dir();
        let mut loader = sized_loader(sizes);
        for name in pin::PINNED_MAPS {
            loader.map_pin_path(name, map_dir.join(name));
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(DataplaneError::Load)?;
        let kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("the XDP program's log is not available: {e}");
                None
            }
        };
        let mut dp = AyaDataplane {
            ebpf,
            attached: Vec::new(),
            pin_dir: Some(opts.dir.clone()),
            pinned_links: Vec::new(),
            _pin_lock: Some(lock),
            kernel_log,
        };
        {
            // Written once the maps exist: a start interrupted before this leaves
            // pins without a record, which the next start refuses (never misreads).
            // Rewritten at every start: an adopted record can differ only in
            // flow_table_size, whose tables `prepare` found or made at the new size.
            let mut layout: Array<&mut MapData, Layout> = dp.map("LAYOUT")?;
            layout
                .set(0, opts.layout(&sizes), 0)
                .map_err(map_err("LAYOUT"))?;
        }
        for m in migrations {
            let (name, from, to) = (m.map, m.from_entries, m.to_entries);
            let map = dp.ebpf.map_mut(name).ok_or(DataplaneError::Missing(name))?;
            let copied = m.write(map)?;
            log::info!("migrated pinned map {name} from {from} to {to} entries ({copied} copied)");
        }
        // The filter is this load's own map: fill it from the adopted tables before
        // the program can see a packet.
        dp.rebuild_endpoint_filter()?;
        dp.refresh_slot_endpoints(None)?;
        dp.rebuild_services_by_id()?;
        dp.set_slot_conf()?;
        dp.load_program(PROGRAM)?;
        Ok((dp, found == Found::Adoptable))
    }

    /// EMBRYO_SLOT_CONF: the mask of EMBRYO_SLOTS as it is (made now, or adopted from
    /// the pins) and the NAT guard, before the program can see a packet. Until the
    /// mask is written it is 0: every flow shares slot 0, which is slow but still right.
    fn set_slot_conf(&mut self) -> Result<(), DataplaneError> {
        // Only an earlier build's object (`cargo xtask bench pkt` A/B runs) lacks it.
        if self.ebpf.map("EMBRYO_SLOTS").is_none() {
            return Ok(());
        }
        let slots = self.map_info("EMBRYO_SLOTS")?.max_entries();
        let mut conf: Array<&mut MapData, u32> = self.map("EMBRYO_SLOT_CONF")?;
        conf.set(SLOT_CONF_MASK, slots.saturating_sub(1), 0)
            .map_err(map_err("EMBRYO_SLOT_CONF"))?;
        self.set_slot_guard(SLOT_GUARD_UNITS)
    }

    /// How long a NAT flow's slot is kept from other flows, in units of 2^20 ns
    /// (`xdp_lb_common::SLOT_TIME_SHIFT`); `run` keeps `SLOT_GUARD_UNITS`.
    pub fn set_slot_guard(&mut self, units: u32) -> Result<(), DataplaneError> {
        let mut conf: Array<&mut MapData, u32> = self.map("EMBRYO_SLOT_CONF")?;
        conf.set(SLOT_CONF_GUARD, units, 0)
            .map_err(map_err("EMBRYO_SLOT_CONF"))
    }

    /// EMBRYO_SLOTS[`i`] as it is, lock and age included (tests: to hold a slot's lock
    /// as a CPU writing it would).
    pub fn embryo_slot_at(&self, i: u32) -> Result<EmbryoSlot, DataplaneError> {
        let slots: Array<&MapData, EmbryoSlot> = self.map_ref("EMBRYO_SLOTS")?;
        slots.get(&i, 0).map_err(map_err("EMBRYO_SLOTS"))
    }

    /// Writes EMBRYO_SLOTS[`i`] (tests, beside `embryo_slot_at`).
    pub fn set_embryo_slot_at(&mut self, i: u32, slot: &EmbryoSlot) -> Result<(), DataplaneError> {
        let mut slots: Array<&mut MapData, EmbryoSlot> = self.map("EMBRYO_SLOTS")?;
        slots.set(i, slot, 0).map_err(map_err("EMBRYO_SLOTS"))
    }

    /// The embryonic entry EMBRYO_SLOTS holds for `key`, if any.
    fn embryo_slot(&self, key: &FlowKey) -> Result<Option<FlowValue>, DataplaneError> {
        let slots: Array<&MapData, EmbryoSlot> = self.map_ref("EMBRYO_SLOTS")?;
        let i = flow_hash(key) & slots.len().saturating_sub(1);
        let s = slots.get(&i, 0).map_err(map_err("EMBRYO_SLOTS"))?;
        Ok(slot_holds(&s).filter(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// How many embryonic flows EMBRYO_SLOTS holds (one lookup syscall per slot).
    fn embryo_slot_count(&self) -> Result<usize, DataplaneError> {
        let slots: Array<&MapData, EmbryoSlot> = self.map_ref("EMBRYO_SLOTS")?;
        let mut n = 0;
        for s in slots.iter() {
            if slot_holds(&s.map_err(map_err("EMBRYO_SLOTS"))?).is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sets the ENDPOINT_FILTER bits of `pairs` (address, port): before their
    /// SERVICES or BACKEND_REPLIES keys are inserted, so the program never skips a
    /// key it could find.
    fn endpoint_filter_add(
        &mut self,
        pairs: impl Iterator<Item = ([u32; 4], u16)>,
    ) -> Result<(), DataplaneError> {
        self.endpoint_bits_write("ENDPOINT_FILTER", pairs, true)
    }

    /// Sets (`on`) or clears the bits of `pairs` in the endpoint bitmap `name`
    /// (ENDPOINT_FILTER's shape), writing only the words that change.
    fn endpoint_bits_write(
        &mut self,
        name: &'static str,
        pairs: impl Iterator<Item = ([u32; 4], u16)>,
        on: bool,
    ) -> Result<(), DataplaneError> {
        let mut bitmap: Array<&mut MapData, u64> = self.map(name)?;
        for (addr, port) in pairs {
            let (word, mask) = endpoint_word(&addr, port);
            let w = bitmap.get(&word, 0).map_err(map_err(name))?;
            let new = if on { w | mask } else { w & !mask };
            if new != w {
                bitmap.set(word, new, 0).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// Recomputes ENDPOINT_FILTER from the keys SERVICES and BACKEND_REPLIES hold
    /// now, writing only the words that change: bits of removed keys go, and every
    /// word written holds the bits of all present keys, so no lookup the program
    /// needs is skipped at any moment (this process is the tables' only writer).
    fn rebuild_endpoint_filter(&mut self) -> Result<(), DataplaneError> {
        let mut want = vec![0u64; ENDPOINT_FILTER_WORDS as usize];
        let mut mark = |addr: &[u32; 4], port: u16| {
            let (word, mask) = endpoint_word(addr, port);
            want[word as usize] |= mask;
        };
        {
            let services: HashMap<&MapData, ServiceKey, Service> = self.map_ref("SERVICES")?;
            for k in services.keys() {
                let k = k.map_err(map_err("SERVICES"))?;
                mark(&k.addr, k.port);
            }
            let replies: HashMap<&MapData, ServiceKey, ReplyTarget> =
                self.map_ref("BACKEND_REPLIES")?;
            for k in replies.keys() {
                let k = k.map_err(map_err("BACKEND_REPLIES"))?;
                mark(&k.addr, k.port);
            }
        }
        let mut filter: Array<&mut MapData, u64> = self.map("ENDPOINT_FILTER")?;
        for (i, w) in want.into_iter().enumerate() {
            let i = i as u32;
            if filter.get(&i, 0).map_err(map_err("ENDPOINT_FILTER"))? != w {
                filter.set(i, w, 0).map_err(map_err("ENDPOINT_FILTER"))?;
            }
        }
        Ok(())
    }

    /// The `endpoint_bit`s of the SERVICES keys, as a bitmap (ENDPOINT_FILTER's shape).
    fn service_bits(&self) -> Result<Vec<u64>, DataplaneError> {
        let mut bits = vec![0u64; ENDPOINT_FILTER_WORDS as usize];
        let services: HashMap<&MapData, ServiceKey, Service> = self.map_ref("SERVICES")?;
        for k in services.keys() {
            let k = k.map_err(map_err("SERVICES"))?;
            let (word, mask) = endpoint_word(&k.addr, k.port);
            bits[word as usize] |= mask;
        }
        Ok(bits)
    }

    /// Clears the SLOT_ENDPOINTS bit of every service that `writes` make other than a
    /// hash-scheduled DSR one (`slot_only`), before SERVICES holds it: from then on its
    /// handshakes may be in EMBRYOS, which packets to its bit must look in.
    fn slot_endpoints_clear(
        &mut self,
        writes: &[(ServiceKey, Service)],
    ) -> Result<(), DataplaneError> {
        if self.ebpf.map("SLOT_ENDPOINTS").is_none() {
            return Ok(());
        }
        let others = writes
            .iter()
            .filter(|(k, v)| !slot_only(k, v))
            .map(|(k, _)| (k.addr, k.port));
        self.endpoint_bits_write("SLOT_ENDPOINTS", others, false)
    }

    /// SLOT_ENDPOINTS from SERVICES as it is now: a bit is set when every key of it is
    /// `slot_only`, but only where `had` (the bits that had a service before the plan;
    /// None at a load) is clear or the bit was set already. A bit that held another
    /// service stays clear until the next start, so no handshake that one left in
    /// EMBRYOS is skipped (it costs its packets the EMBRYOS lookup, nothing else).
    fn refresh_slot_endpoints(&mut self, had: Option<&[u64]>) -> Result<(), DataplaneError> {
        // Only an earlier build's object (`cargo xtask bench pkt` A/B runs) lacks it.
        if self.ebpf.map("SLOT_ENDPOINTS").is_none() {
            return Ok(());
        }
        let words = ENDPOINT_FILTER_WORDS as usize;
        let (mut hashed, mut other) = (vec![0u64; words], vec![0u64; words]);
        {
            let services: HashMap<&MapData, ServiceKey, Service> = self.map_ref("SERVICES")?;
            for e in services.iter() {
                let (k, v) = e.map_err(map_err("SERVICES"))?;
                let (word, mask) = endpoint_word(&k.addr, k.port);
                let into = if slot_only(&k, &v) {
                    &mut hashed
                } else {
                    &mut other
                };
                into[word as usize] |= mask;
            }
        }
        let mut hint: Array<&mut MapData, u64> = self.map("SLOT_ENDPOINTS")?;
        for i in 0..words {
            let old = hint
                .get(&(i as u32), 0)
                .map_err(map_err("SLOT_ENDPOINTS"))?;
            let mut new = hashed[i] & !other[i];
            if let Some(had) = had {
                new &= old | !had[i];
            }
            if new != old {
                hint.set(i as u32, new, 0)
                    .map_err(map_err("SLOT_ENDPOINTS"))?;
            }
        }
        Ok(())
    }

    /// Whether packets to (address, port) skip EMBRYOS (SLOT_ENDPOINTS): for tests.
    pub fn slot_endpoint(&self, addr: [u32; 4], port: u16) -> Result<bool, DataplaneError> {
        let hint: Array<&MapData, u64> = self.map_ref("SLOT_ENDPOINTS")?;
        let (word, mask) = endpoint_word(&addr, port);
        let w = hint.get(&word, 0).map_err(map_err("SLOT_ENDPOINTS"))?;
        Ok(w & mask != 0)
    }

    /// Fills SERVICES_BY_ID from SERVICES (this load's own, zeroed array; SERVICES
    /// may be adopted): every service's entry under its id.
    fn rebuild_services_by_id(&mut self) -> Result<(), DataplaneError> {
        let entries = {
            let services: HashMap<&MapData, ServiceKey, Service> = self.map_ref("SERVICES")?;
            services
                .iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(map_err("SERVICES"))?
        };
        self.services_by_id_write(&entries)
    }

    /// Writes the SERVICES_BY_ID entry of each (key, record) SERVICES now holds.
    fn services_by_id_write(
        &mut self,
        entries: &[(ServiceKey, Service)],
    ) -> Result<(), DataplaneError> {
        let mut by_id: Array<&mut MapData, ServiceEntry> = self.map("SERVICES_BY_ID")?;
        for (key, svc) in entries {
            by_id
                .set(
                    svc.id,
                    ServiceEntry {
                        key: *key,
                        svc: *svc,
                    },
                    0,
                )
                .map_err(map_err("SERVICES_BY_ID"))?;
        }
        Ok(())
    }

    /// Loads (verifies) one program of the object.
    pub fn load_program(&mut self, name: &'static str) -> Result<&mut Xdp, DataplaneError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            verify(name, || prog.load())?;
        }
        Ok(prog)
    }

    /// Attaches `program` to `iface`. In `auto` mode a driver without native XDP
    /// falls back to generic mode with a warning. Returns the mode used.
    pub fn attach(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: config::XdpMode,
    ) -> Result<&'static str, DataplaneError> {
        let idx = ifindex(iface).ok_or_else(|| DataplaneError::NoInterface(iface.to_string()))?;
        let link_path = match (&self.pin_dir, program) {
            (Some(dir), PROGRAM) => Some(pin::link_path(dir, iface)),
            _ => None,
        };
        if let Some(path) = &link_path {
            if self.replace_pinned(program, iface, path)? {
                self.add_tx_port(idx)?;
                self.attached.push((iface.to_string(), "replaced in place"));
                return Ok("replaced in place");
            }
        }
        let prog = self.load_program(program)?;
        let attempt = |prog: &mut Xdp, m: XdpMode, label: &'static str| {
            prog.attach(iface, m).map_err(|source| {
                // Another program in place is not a missing driver feature: falling
                // back to generic mode would stack a second balancer behind it.
                let os = os_error(&source);
                if os == Some(libc::EBUSY) || os == Some(libc::EEXIST) {
                    DataplaneError::Busy(iface.to_string())
                } else {
                    DataplaneError::Attach {
                        iface: iface.to_string(),
                        mode: label,
                        source,
                    }
                }
            })
        };
        let (link, used) = match mode {
            config::XdpMode::Native => (attempt(prog, XdpMode::Driver, "native")?, "native"),
            config::XdpMode::Generic => (attempt(prog, XdpMode::Skb, "generic")?, "generic"),
            config::XdpMode::Auto => match attempt(prog, XdpMode::Driver, "native") {
                Ok(l) => (l, "native"),
                Err(e @ DataplaneError::Busy(_)) => return Err(e),
                Err(e) => {
                    log::warn!(
                        "{iface}: native XDP unavailable ({}); falling back to generic (SKB) mode, which is much slower",
                        error_chain(&e)
                    );
                    (attempt(prog, XdpMode::Skb, "generic")?, "generic")
                }
            },
        };
        if let Some(path) = link_path {
            // A pinned link keeps the program attached when this process exits or
            // is killed, until `xdp-lb detach` or the next run replaces it.
            let owned = prog
                .take_link(link)
                .map_err(|source| DataplaneError::Program {
                    name: program,
                    source,
                })?;
            match FdLink::try_from(owned) {
                Ok(fd) => {
                    let pinned = fd.pin(&path).map_err(|source| DataplaneError::PinLink {
                        path: path.clone(),
                        source,
                    })?;
                    self.pinned_links.push(pinned);
                }
                Err(e) => {
                    // Old kernels attach through netlink, which cannot be pinned;
                    // such an attachment also outlives the process, but a restart
                    // cannot replace it atomically.
                    log::warn!("{iface}: the XDP attachment is not a bpf_link ({e}); it cannot be pinned or replaced in place");
                }
            }
        }
        if program == PROGRAM {
            self.add_tx_port(idx)?;
            self.add_tc_port(iface, idx)?;
        }
        self.attached.push((iface.to_string(), used));
        Ok(used)
    }

    /// Loads (verifies) the tc program.
    pub fn load_tc_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.load_classifier(TC_PROGRAM)
    }

    /// Loads the tc program `name` of the object (the balancer or a bench program).
    pub fn load_classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, DataplaneError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if prog.fd().is_err() {
            verify(name, || prog.load())?;
        }
        Ok(prog)
    }

    /// Attaches the tc program at `iface`'s ingress through a TCX link (kernel 6.6+;
    /// no clsact qdisc to manage). Pinned like the XDP links, in `tclink-<iface>`:
    /// it outlives the process, and a restart swaps the program on it in place.
    pub fn attach_tc(&mut self, iface: &str) -> Result<&'static str, DataplaneError> {
        let idx = ifindex(iface).ok_or_else(|| DataplaneError::NoInterface(iface.to_string()))?;
        let link_path = self.pin_dir.as_ref().map(|d| pin::tc_link_path(d, iface));
        let mut used = "tc";
        let mut replaced = false;
        if let Some(path) = &link_path {
            if path.exists() {
                replaced = self.replace_pinned_tc(iface, path)?;
                if replaced {
                    used = "tc, replaced in place";
                }
            }
        }
        if !replaced {
            let prog = self.load_tc_program()?;
            let link = prog
                .attach_with_options(
                    iface,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode: "tc",
                    source,
                })?;
            if let Some(path) = link_path {
                let owned = prog
                    .take_link(link)
                    .map_err(|source| DataplaneError::Program {
                        name: TC_PROGRAM,
                        source,
                    })?;
                let fd = FdLink::try_from(owned).map_err(|source| DataplaneError::Link {
                    iface: iface.to_string(),
                    source,
                })?;
                let pinned = fd.pin(&path).map_err(|source| DataplaneError::PinLink {
                    path: path.clone(),
                    source,
                })?;
                self.pinned_links.push(pinned);
            }
        }
        self.add_tx_port(idx)?;
        self.add_tc_port(iface, idx)?;
        self.attached.push((iface.to_string(), used));
        Ok(used)
    }

    /// `replace_pinned` for a tc link. False (after removing the dead pin) when its
    /// interface went away.
    fn replace_pinned_tc(
        &mut self,
        iface: &str,
        path: &std::path::Path,
    ) -> Result<bool, DataplaneError> {
        let link_err = |source| DataplaneError::Link {
            iface: iface.to_string(),
            source,
        };
        let link = PinnedLink::from_pin(path).map_err(link_err)?;
        let fd: FdLink = link.into();
        let tc_link = SchedClassifierLink::try_from(fd).map_err(link_err)?;
        let prog = self.load_tc_program()?;
        let swapped = prog.attach_to_link(tc_link).map(|_| ());
        link_swapped(iface, "tc ", path, swapped)
    }

    /// Lets the tc program redirect to interface `ifindex`, into the peer's
    /// namespace when it is a veth whose peer lives elsewhere.
    pub fn add_tc_port(&mut self, iface: &str, ifindex: u32) -> Result<(), DataplaneError> {
        let flags = if super::iface::veth_peer_elsewhere(iface, ifindex) {
            xdp_lb_common::TC_PORT_PEER
        } else {
            0
        };
        let mut ports: HashMap<&mut MapData, u32, u32> = self.map("TC_PORTS")?;
        ports
            .insert(ifindex, flags, 0)
            .map_err(map_err("TC_PORTS"))?;
        if ifindex < xdp_lb_common::TC_PORT_SLOTS {
            // An object from before the array (`bench pkt`'s A/B of an older build)
            // finds every port in TC_PORTS.
            let mut slots: Array<&mut MapData, u32> = match self.map("TC_PORT_SLOTS") {
                Err(DataplaneError::Missing(_)) => return Ok(()),
                m => m?,
            };
            slots
                .set(ifindex, flags | xdp_lb_common::TC_PORT_ATTACHED, 0)
                .map_err(map_err("TC_PORT_SLOTS"))?;
        }
        Ok(())
    }

    /// Swaps `program` into the link pinned at `path` (one `bpf_link_update`: the
    /// interface never runs without a program). False when there is no usable
    /// pinned link (none, or its interface went away), after removing a dead pin.
    fn replace_pinned(
        &mut self,
        program: &'static str,
        iface: &str,
        path: &std::path::Path,
    ) -> Result<bool, DataplaneError> {
        if !path.exists() {
            return Ok(false);
        }
        let link = PinnedLink::from_pin(path).map_err(|source| DataplaneError::Link {
            iface: iface.to_string(),
            source,
        })?;
        let fd: FdLink = link.into();
        let xdp_link = XdpLink::try_from(fd).map_err(|source| DataplaneError::Link {
            iface: iface.to_string(),
            source,
        })?;
        let prog = self.load_program(program)?;
        let swapped = prog.attach_to_link(xdp_link).map(|_| ());
        link_swapped(iface, "", path, swapped)
    }

    /// Lets the program XDP_REDIRECT frames to interface `ifindex` (every interface
    /// the balancer is attached to is added by `attach`).
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let mut ports: DevMapHash<&mut MapData> = self.map("TX_PORTS")?;
        ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| match e {
                aya::maps::xdp::XdpMapError::MapError(source) => DataplaneError::Map {
                    map: "TX_PORTS",
                    source,
                },
                aya::maps::xdp::XdpMapError::ChainedProgramNotSupported => {
                    DataplaneError::Missing("TX_PORTS")
                }
            })
    }

    fn map_ref<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self.ebpf.map(name).ok_or(DataplaneError::Missing(name))?;
        T::try_from(m).map_err(map_err(name))
    }

    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        T::try_from(m).map_err(map_err(name))
    }

    /// A descriptor that becomes readable when the program has logged something;
    /// call `flush_kernel_log` then.
    pub fn kernel_log_fd(&self) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        use std::os::fd::AsFd;
        self.kernel_log
            .as_ref()
            .map(|l| l.as_fd().try_clone_to_owned())
    }

    /// Writes the program's pending log lines to the `log` logger.
    pub fn flush_kernel_log(&mut self) {
        if let Some(l) = &mut self.kernel_log {
            l.flush();
        }
    }

    /// Interfaces attached so far and the mode each got.
    pub fn attached(&self) -> &[(String, &'static str)] {
        &self.attached
    }

    /// Writes flow-table entries from userspace: benchmarks fill the table this way to
    /// measure what a full table costs the control plane.
    pub fn insert_flows(
        &mut self,
        entries: impl IntoIterator<Item = (FlowKey, FlowValue)>,
    ) -> Result<u64, DataplaneError> {
        let mut flows: HashMap<&mut MapData, FlowKey, FlowValue> = self.map("FLOWS")?;
        let mut n = 0;
        for (k, v) in entries {
            flows.insert(k, v, 0).map_err(map_err("FLOWS"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes client flows from FLOWS, each with its NAT_REVERSE entry (named by the
    /// flow's backend): benchmarks put the table back as it was after a case that
    /// promoted flows. Keys not in FLOWS are skipped; returns how many were removed.
    pub fn remove_flows(
        &mut self,
        keys: impl IntoIterator<Item = FlowKey>,
    ) -> Result<u64, DataplaneError> {
        let mut found = Vec::new();
        {
            let flows: HashMap<&MapData, FlowKey, FlowValue> = self.map_ref("FLOWS")?;
            let backends: Array<&MapData, Backend> = self.map_ref("BACKENDS")?;
            let mut cache = std::collections::HashMap::new();
            for k in keys {
                let v = match flows.get(&k, 0) {
                    Ok(v) => v,
                    Err(aya::maps::MapError::KeyNotFound) => continue,
                    Err(e) => return Err(map_err("FLOWS")(e)),
                };
                let b = match cache.get(&v.backend_id) {
                    Some(b) => *b,
                    None => {
                        let b = backends
                            .get(&v.backend_id, 0)
                            .map_err(map_err("BACKENDS"))?;
                        cache.insert(v.backend_id, b);
                        b
                    }
                };
                found.push((k, k.nat_reply(b.addr, b.port)));
            }
        }
        let mut reverse: HashMap<&mut MapData, FlowKey, NatReverse> = self.map("NAT_REVERSE")?;
        for (_, reply) in &found {
            absent(reverse.remove(reply)).map_err(map_err("NAT_REVERSE"))?;
        }
        let mut flows: HashMap<&mut MapData, FlowKey, FlowValue> = self.map("FLOWS")?;
        for (k, _) in &found {
            absent(flows.remove(k)).map_err(map_err("FLOWS"))?;
        }
        Ok(found.len() as u64)
    }

    /// The kernel's description of a loaded map (type, sizes, flags): benchmarks print
    /// what they measured against.
    pub fn map_info(&self, name: &'static str) -> Result<aya::maps::MapInfo, DataplaneError> {
        use aya::maps::Map;
        let m = self.ebpf.map(name).ok_or(DataplaneError::Missing(name))?;
        let data = match m {
            Map::Array(d)
            | Map::HashMap(d)
            | Map::LruHashMap(d)
            | Map::PerCpuArray(d)
            | Map::PerCpuHashMap(d)
            | Map::PerCpuLruHashMap(d)
            | Map::ProgramArray(d)
            | Map::DevMapHash(d) => d,
            _ => return Err(DataplaneError::Missing(name)),
        };
        data.info().map_err(map_err(name))
    }

    /// Runs the loaded XDP program `name` on `frame` as received on `ifindex`,
    /// `repeat` times (BPF_PROG_TEST_RUN): for packet tests and the per-packet bench.
    /// The kernel does not restore the frame between iterations, so a program that
    /// rewrites it sees its own output from the second on: time such a program
    /// through `xdp_bench_wrapper` (see `set_bench_case`).
    pub fn test_run(
        &mut self,
        name: &'static str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        let prog = self.load_program(name)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (offsets into the frame, native byte order).
        let ctx: Vec<u8> = [0u32, frame.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        // Room for programs that grow the frame (encapsulation).
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..Default::default()
            })
            .map_err(|source| DataplaneError::TestRun { name, source })?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutcome {
            action: r.return_value,
            frame: out,
            per_run: r.duration,
        })
    }

    /// `test_run` for the tc program: the frame as an skb arriving on `ifindex`
    /// (its checksum state CHECKSUM_NONE, linear, not GSO). The action is a TC_ACT_*
    /// value; a redirect is not carried out by the test run.
    pub fn test_run_tc(
        &mut self,
        frame: &[u8],
        ifindex: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        self.test_run_tc_gso(frame, ifindex, 0, 0)
    }

    /// `test_run_tc` on a GSO skb: one the stack segments later into `gso_segs`
    /// packets of `gso_size` payload bytes each (the frame itself stays linear).
    pub fn test_run_tc_gso(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        gso_size: u32,
        gso_segs: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        self.test_run_classifier(TC_PROGRAM, frame, ifindex, gso_size, gso_segs, 1)
    }

    /// `test_run_tc_gso` of the tc program `name`, `repeat` times: for the per-packet
    /// bench, whose `tc_bench_wrapper` restores the frame (see `set_bench_case`).
    pub fn test_run_classifier(
        &mut self,
        name: &'static str,
        frame: &[u8],
        ifindex: u32,
        gso_size: u32,
        gso_segs: u32,
        repeat: u32,
    ) -> Result<TestRunOutcome, DataplaneError> {
        let prog = self.load_classifier(name)?;
        // struct __sk_buff up to `gso_size`: zero but for ingress_ifindex (offset
        // 36), ifindex (40), gso_segs (164) and gso_size (176), fields the kernel
        // takes from ctx_in.
        let mut ctx = [0u8; 180];
        ctx[36..40].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
        ctx[176..180].copy_from_slice(&gso_size.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..Default::default()
            })
            .map_err(|source| DataplaneError::TestRun { name, source })?;
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutcome {
            action: r.return_value,
            frame: out,
            per_run: r.duration,
        })
    }

    /// Prepares `xdp_bench_wrapper` (or, with `tc`, `tc_bench_wrapper`): the program
    /// it tail-calls (loaded if needed), the frame it restores before each
    /// iteration, and its flow counter back at 0.
    pub fn set_bench_case(
        &mut self,
        target: &'static str,
        tc: bool,
        frame: xdp_lb_common::BenchFrame,
    ) -> Result<(), DataplaneError> {
        let fd = if tc {
            self.load_classifier(target)?.fd()
        } else {
            self.load_program(target)?.fd()
        };
        let fd = fd
            .and_then(|fd| fd.try_clone().map_err(Into::into))
            .map_err(|source| DataplaneError::Program {
                name: target,
                source,
            })?;
        let slots = if tc {
            self.load_classifier("tc_bench_wrapper")?;
            "BENCH_TARGET_TC"
        } else {
            self.load_program("xdp_bench_wrapper")?;
            "BENCH_TARGET"
        };
        let mut targets: aya::maps::ProgramArray<&mut MapData> = self.map(slots)?;
        targets.set(0, &fd, 0).map_err(map_err(slots))?;
        let mut frames: Array<&mut MapData, xdp_lb_common::BenchFrame> = self.map("BENCH_FRAME")?;
        frames.set(0, frame, 0).map_err(map_err("BENCH_FRAME"))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let mut counter: PerCpuArray<&mut MapData, u32> = self.map("BENCH_COUNTER")?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![0u32; cpus]).map_err(DataplaneError::Cpus)?;
        counter.set(0, zeros, 0).map_err(map_err("BENCH_COUNTER"))?;
        Ok(())
    }

    /// Whether a flow table (`FLOWS`, `EMBRYOS`) holds `key`; `EMBRYOS` stands for
    /// both embryonic tables (the LRU and EMBRYO_SLOTS), `EMBRYO_SLOTS` for the slots
    /// alone.
    pub fn has_flow(&mut self, table: &'static str, key: &FlowKey) -> Result<bool, DataplaneError> {
        if table == "EMBRYO_SLOTS" || table == "EMBRYOS" {
            let held = self.embryo_slot(key)?.is_some();
            if held || table == "EMBRYO_SLOTS" {
                return Ok(held);
            }
        }
        let m: HashMap<&mut MapData, FlowKey, FlowValue> = self.map(table)?;
        match m.get(key, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(table)(e)),
        }
    }

    /// CONNS[id]: the least-conn count of backend slot `id` (tests and benches).
    pub fn conn_count(&mut self, id: u32) -> Result<i64, DataplaneError> {
        let conns: Array<&MapData, i64> = self.map_ref("CONNS")?;
        conns.get(&id, 0).map_err(map_err("CONNS"))
    }

    /// Overwrites CONNS[id], as reconciliation does (tests and benches).
    pub fn set_conn_count(&mut self, id: u32, n: i64) -> Result<(), DataplaneError> {
        let mut conns: Array<&mut MapData, i64> = self.map("CONNS")?;
        conns.set(id, n, 0).map_err(map_err("CONNS"))
    }

    /// How many entries a flow table (`FLOWS`, `EMBRYOS`) holds: a full walk, for tests.
    /// `EMBRYOS` counts both embryonic tables (the LRU and EMBRYO_SLOTS).
    pub fn flow_table_len(&mut self, table: &'static str) -> Result<usize, DataplaneError> {
        let slots = if table == "EMBRYOS" {
            self.embryo_slot_count()?
        } else {
            0
        };
        let m: HashMap<&mut MapData, FlowKey, FlowValue> = self.map(table)?;
        Ok(m.keys().count() + slots)
    }
}

impl Dataplane for AyaDataplane {
    /// Performs a plan's writes in the order that keeps every intermediate state
    /// consistent for the kernel: backends, then tables into idle slots, then the
    /// service records that publish them, then removals.
    fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        self.endpoint_filter_add(
            plan.service_writes
                .iter()
                .map(|(k, _)| (k.addr, k.port))
                .chain(plan.reply_writes.iter().map(|(k, _)| (k.addr, k.port))),
        )?;
        let services_change = !plan.service_writes.is_empty() || !plan.service_deletes.is_empty();
        let had = if services_change {
            let had = self.service_bits()?;
            self.slot_endpoints_clear(&plan.service_writes)?;
            Some(had)
        } else {
            None
        };
        {
            let mut backends: Array<&mut MapData, Backend> = self.map("BACKENDS")?;
            for (id, b) in &plan.backend_writes {
                backends.set(*id, *b, 0).map_err(map_err("BACKENDS"))?;
            }
        }
        {
            let mut replies: HashMap<&mut MapData, ServiceKey, ReplyTarget> =
                self.map("BACKEND_REPLIES")?;
            for (k, t) in &plan.reply_writes {
                replies
                    .insert(*k, *t, 0)
                    .map_err(map_err("BACKEND_REPLIES"))?;
            }
        }
        {
            let mut ring: Array<&mut MapData, u32> = self.map("MAGLEV_RING")?;
            for (offset, table) in &plan.ring_writes {
                for (i, id) in table.iter().enumerate() {
                    ring.set(offset + i as u32, *id, 0)
                        .map_err(map_err("MAGLEV_RING"))?;
                }
            }
        }
        {
            let mut services: HashMap<&mut MapData, ServiceKey, Service> = self.map("SERVICES")?;
            for (k, v) in &plan.service_writes {
                services.insert(*k, *v, 0).map_err(map_err("SERVICES"))?;
            }
            for k in &plan.service_deletes {
                absent(services.remove(k)).map_err(map_err("SERVICES"))?;
            }
        }
        // Right behind SERVICES: a record the program reads through an established
        // flow is the one SERVICES holds (or the fallback to SERVICES takes over).
        self.services_by_id_write(&plan.service_writes)?;
        if !plan.service_deletes.is_empty() {
            // A deleted key's entry is zeroed, unless this plan gave its id to
            // another service already (written above).
            let mut by_id: Array<&mut MapData, ServiceEntry> = self.map("SERVICES_BY_ID")?;
            for id in 0..by_id.len() {
                let e = by_id.get(&id, 0).map_err(map_err("SERVICES_BY_ID"))?;
                if plan.service_deletes.contains(&e.key) {
                    by_id
                        .set(id, ServiceEntry::default(), 0)
                        .map_err(map_err("SERVICES_BY_ID"))?;
                }
            }
        }
        {
            let mut backends: Array<&mut MapData, Backend> = self.map("BACKENDS")?;
            for (id, b) in &plan.backend_frees {
                backends.set(*id, *b, 0).map_err(map_err("BACKENDS"))?;
            }
        }
        {
            let mut replies: HashMap<&mut MapData, ServiceKey, ReplyTarget> =
                self.map("BACKEND_REPLIES")?;
            for k in &plan.reply_deletes {
                absent(replies.remove(k)).map_err(map_err("BACKEND_REPLIES"))?;
            }
        }
        if !plan.service_deletes.is_empty() || !plan.reply_deletes.is_empty() {
            self.rebuild_endpoint_filter()?;
        }
        if let Some(had) = had {
            self.refresh_slot_endpoints(Some(&had))?;
        }
        let mut owners: Array<&mut MapData, u32> = self.map("BACKEND_OWNERS")?;
        for (id, owner) in &plan.owner_writes {
            owners
                .set(*id, *owner, 0)
                .map_err(map_err("BACKEND_OWNERS"))?;
        }
        Ok(())
    }

    /// Reads SERVICES (and each live table), every used BACKENDS slot with its
    /// owner, and BACKEND_REPLIES. One lookup per entry: at most MAX_BACKENDS
    /// backend reads plus the live tables' entries, once per start.
    fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        let services: HashMap<&MapData, ServiceKey, Service> = self.map_ref("SERVICES")?;
        let ring: Array<&MapData, u32> = self.map_ref("MAGLEV_RING")?;
        let mut snap = Snapshot::default();
        for entry in services.iter() {
            let (key, svc) = entry.map_err(map_err("SERVICES"))?;
            let end = svc.ring_offset.checked_add(svc.ring_size);
            if end.is_none_or(|e| e > ring.len()) {
                return Err(DataplaneError::Inconsistent {
                    map: "SERVICES",
                    what: "a table outside MAGLEV_RING",
                });
            }
            let table = (svc.ring_offset..svc.ring_offset + svc.ring_size)
                .map(|i| ring.get(&i, 0).map_err(map_err("MAGLEV_RING")))
                .collect::<Result<Vec<u32>, _>>()?;
            snap.services.push((key, svc, table));
        }
        let backends: Array<&MapData, Backend> = self.map_ref("BACKENDS")?;
        let owners: Array<&MapData, u32> = self.map_ref("BACKEND_OWNERS")?;
        for id in 0..backends.len() {
            let b = backends.get(&id, 0).map_err(map_err("BACKENDS"))?;
            if b.generation == 0 {
                continue;
            }
            let owner = owners.get(&id, 0).map_err(map_err("BACKEND_OWNERS"))?;
            snap.backends.push((id, b, owner));
        }
        let replies: HashMap<&MapData, ServiceKey, ReplyTarget> =
            self.map_ref("BACKEND_REPLIES")?;
        for entry in replies.iter() {
            snap.replies
                .push(entry.map_err(map_err("BACKEND_REPLIES"))?);
        }
        snap.services.sort_by_key(|(_, s, _)| s.id);
        Ok(snap)
    }

    /// Global verdict counters, summed over CPUs, by `reason` index.
    fn global_counters(&self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        let stats: PerCpuArray<&MapData, u64> = self.map_ref("GLOBAL_STATS")?;
        (0..reason::COUNT)
            .map(|i| {
                let v = stats.get(&i, 0).map_err(map_err("GLOBAL_STATS"))?;
                Ok((reason::NAMES[i as usize], v.iter().sum()))
            })
            .collect()
    }

    fn service_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        self.counters("SERVICE_STATS", id)
    }

    fn backend_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        debug_assert!(id < MAX_BACKENDS);
        self.counters("BACKEND_STATS", id)
    }

    fn flow_counts(&self, limit: u64) -> Result<FlowCounts, DataplaneError> {
        let flows: HashMap<&MapData, FlowKey, FlowValue> = self.map_ref("FLOWS")?;
        let mut counts = FlowCounts::default();
        // One syscall pair per entry (aya 0.14 has no batch lookup): bounded so a
        // status call at a full table costs a known amount of time.
        for entry in flows.iter() {
            if counts.scanned >= limit {
                counts.truncated = true;
                break;
            }
            // An entry can vanish between the key walk and its lookup (LRU eviction).
            let Ok((_, v)) = entry else { continue };
            counts.scanned += 1;
            *counts
                .by_backend
                .entry((v.backend_id, v.generation))
                .or_default() += 1;
        }
        Ok(counts)
    }

    fn reconcile_conns(
        &mut self,
        current: &std::collections::HashMap<u32, u32>,
        limit: u64,
    ) -> Result<Option<std::collections::HashMap<u32, i64>>, DataplaneError> {
        let mut entries = Vec::new();
        // EMBRYO_SLOTS holds no least-conn flow (`xdp_lb_common::slot_scheduled`).
        for map in ["FLOWS", "EMBRYOS"] {
            let table: HashMap<&MapData, FlowKey, FlowValue> = self.map_ref(map)?;
            for entry in table.iter() {
                if entries.len() as u64 >= limit {
                    return Ok(None);
                }
                // Evicted between the key walk and the lookup: gone, not counted.
                if let Ok(e) = entry {
                    entries.push(e);
                }
            }
        }
        let now = super::conns::now_units();
        let counts = super::conns::count(entries.iter().map(|(k, v)| (k, v)), current, now);
        // Kernel adds that land between the walk and this write are lost until the
        // next reconciliation; the counts steer new flows, they are not accounting.
        let mut conns: Array<&mut MapData, i64> = self.map("CONNS")?;
        for (&id, &n) in &counts {
            conns.set(id, n, 0).map_err(map_err("CONNS"))?;
        }
        Ok(Some(counts))
    }
}

impl AyaDataplane {
    fn counters(&self, map: &'static str, index: u32) -> Result<Counters, DataplaneError> {
        let stats: PerCpuArray<&MapData, Counters> = self.map_ref(map)?;
        let v = stats.get(&index, 0).map_err(map_err(map))?;
        Ok(v.iter().fold(Counters::default(), |mut acc, c| {
            acc.packets += c.packets;
            acc.bytes += c.bytes;
            acc.new_flows += c.new_flows;
            acc
        }))
    }
}

/// The OS error code somewhere in `e`'s chain of causes.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

/// "outer: inner: innermost" for log lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
