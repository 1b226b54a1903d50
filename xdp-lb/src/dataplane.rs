//! The one place that touches aya: loads the embedded XDP object with maps sized from
//! the configuration, attaches it to interfaces, performs a `Plan`'s map writes in
//! order, and reads the counters back. Everything above it is plain Rust.
use aya::{
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use xdp_lb_common::{
    embryo_table_size, reason, Backend, Counters, ReplyTarget, Service, ServiceKey, MAX_BACKENDS,
};

use crate::{cli, plan::Plan};

/// The XDP object built from xdp-lb-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-lb-ebpf"));

/// Name of the balancer program in the object.
pub const PROGRAM: &str = "xdp_lb";
/// Attempts at loading a program whose verification was interrupted (EAGAIN).
const LOAD_TRIES: u32 = 5;

/// Name of the pass-everything program for veth peers.
pub const PASS_PROGRAM: &str = "xdp_pass";

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the embedded XDP object is empty: this binary was built with AYA_BUILD_SKIP=1; rebuild without it")]
    StubObject,
    #[error("loading the XDP object into the kernel failed (are you root, and does the kernel support BPF?)")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program or map named {0}")]
    Missing(&'static str),
    #[error("program {name} was rejected by the kernel (verifier or missing XDP support)")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching XDP to interface {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {0} already has an XDP program attached (another xdp-lb? see `ip link show {0}`; detach it with `ip link set dev {0} xdp off`)")]
    Busy(String),
    #[error("interface {0} does not exist (see `ip link`)")]
    NoInterface(String),
    #[error("updating map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Map capacities decided by the configuration at start.
#[derive(Debug, Clone, Copy)]
pub struct MapSizes {
    pub ring_entries: u32,
    pub flow_table_size: u32,
}

pub struct Dataplane {
    ebpf: Ebpf,
    attached: Vec<(String, &'static str)>,
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

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

impl Dataplane {
    /// Loads the object and the balancer program; nothing is attached yet.
    pub fn load(sizes: MapSizes) -> Result<Self, DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::StubObject);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("MAGLEV_RING", sizes.ring_entries.max(1))
            .map_max_entries("FLOWS", sizes.flow_table_size)
            .map_max_entries("NAT_REVERSE", sizes.flow_table_size)
            .map_max_entries("EMBRYOS", embryo_table_size(sizes.flow_table_size))
            .map_max_entries("EMBRYO_REVERSE", embryo_table_size(sizes.flow_table_size))
            .load(EBPF_OBJECT)
            .map_err(DataplaneError::Load)?;
        let kernel_log = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("the XDP program's log is not available: {e}");
                None
            }
        };
        let mut dp = Dataplane {
            ebpf,
            attached: Vec::new(),
            kernel_log,
        };
        dp.load_program(PROGRAM)?;
        Ok(dp)
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
            // The verifier gives up with EAGAIN when a signal is pending on the
            // loading thread; libbpf retries the same way.
            let mut tries = LOAD_TRIES;
            loop {
                match prog.load() {
                    Ok(()) => break,
                    Err(e) if tries > 1 && os_error(&e) == Some(libc::EAGAIN) => {
                        tries -= 1;
                        log::debug!("{name}: verifier interrupted (EAGAIN), loading again");
                    }
                    Err(source) => return Err(DataplaneError::Program { name, source }),
                }
            }
        }
        Ok(prog)
    }

    /// Attaches `program` to `iface`. In `auto` mode a driver without native XDP
    /// falls back to generic mode with a warning. Returns the mode used.
    pub fn attach(
        &mut self,
        program: &'static str,
        iface: &str,
        mode: cli::XdpMode,
    ) -> Result<&'static str, DataplaneError> {
        let idx = ifindex(iface).ok_or_else(|| DataplaneError::NoInterface(iface.to_string()))?;
        let prog = self.load_program(program)?;
        let attempt = |prog: &mut Xdp, m: XdpMode, label: &'static str| {
            prog.attach(iface, m).map(|_| label).map_err(|source| {
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
        let used = match mode {
            cli::XdpMode::Native => attempt(prog, XdpMode::Driver, "native")?,
            cli::XdpMode::Generic => attempt(prog, XdpMode::Skb, "generic")?,
            cli::XdpMode::Auto => match attempt(prog, XdpMode::Driver, "native") {
                Ok(m) => m,
                Err(e @ DataplaneError::Busy(_)) => return Err(e),
                Err(e) => {
                    log::warn!(
                        "{iface}: native XDP unavailable ({}); falling back to generic (SKB) mode, which is much slower",
                        error_chain(&e)
                    );
                    attempt(prog, XdpMode::Skb, "generic")?
                }
            },
        };
        if program == PROGRAM {
            self.add_tx_port(idx)?;
        }
        self.attached.push((iface.to_string(), used));
        Ok(used)
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

    /// Performs a plan's writes in the order that keeps every intermediate state
    /// consistent for the kernel: backends, then tables into idle slots, then the
    /// service records that publish them, then removals.
    pub fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
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
                match services.remove(k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(source) => {
                        return Err(DataplaneError::Map {
                            map: "SERVICES",
                            source,
                        })
                    }
                }
            }
        }
        {
            let mut backends: Array<&mut MapData, Backend> = self.map("BACKENDS")?;
            for (id, b) in &plan.backend_frees {
                backends.set(*id, *b, 0).map_err(map_err("BACKENDS"))?;
            }
        }
        let mut replies: HashMap<&mut MapData, ServiceKey, ReplyTarget> =
            self.map("BACKEND_REPLIES")?;
        for k in &plan.reply_deletes {
            match replies.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DataplaneError::Map {
                        map: "BACKEND_REPLIES",
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Global verdict counters, summed over CPUs, by `reason` index.
    pub fn global_counters(&mut self) -> Result<Vec<(&'static str, u64)>, DataplaneError> {
        let stats: PerCpuArray<&mut MapData, u64> = self.map("GLOBAL_STATS")?;
        (0..reason::COUNT)
            .map(|i| {
                let v = stats.get(&i, 0).map_err(map_err("GLOBAL_STATS"))?;
                Ok((reason::NAMES[i as usize], v.iter().sum()))
            })
            .collect()
    }

    fn counters(&mut self, map: &'static str, index: u32) -> Result<Counters, DataplaneError> {
        let stats: PerCpuArray<&mut MapData, Counters> = self.map(map)?;
        let v = stats.get(&index, 0).map_err(map_err(map))?;
        Ok(v.iter().fold(Counters::default(), |mut acc, c| {
            acc.packets += c.packets;
            acc.bytes += c.bytes;
            acc.new_flows += c.new_flows;
            acc
        }))
    }

    /// Counters of one service id, summed over CPUs.
    pub fn service_counters(&mut self, id: u32) -> Result<Counters, DataplaneError> {
        self.counters("SERVICE_STATS", id)
    }

    /// Counters of one backend id, summed over CPUs.
    pub fn backend_counters(&mut self, id: u32) -> Result<Counters, DataplaneError> {
        debug_assert!(id < MAX_BACKENDS);
        self.counters("BACKEND_STATS", id)
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

    /// Raw access for tests and benchmarks (test runs, flow-table inspection).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
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
