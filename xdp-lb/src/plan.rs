//! Placeholder for the planner (being written on the `control` branch).
use xdp_lb_common::{Backend, Service, ServiceKey};

#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub backend_writes: Vec<(u32, Backend)>,
    pub ring_writes: Vec<(u32, Vec<u32>)>,
    pub service_writes: Vec<(ServiceKey, Service)>,
    pub service_deletes: Vec<ServiceKey>,
    pub backend_frees: Vec<(u32, Backend)>,
}
