//! A fake vhost-user backend for the virtio-fs tests: the `vhost` crate's backend
//! request handler on one end of a socket pair, in its own thread, recording what the
//! frontend sent (messages in order, memory table, ring addresses, eventfds).

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error, GpuBackend, VhostUserBackendReqHandlerMut, VhostUserProtocolFeatures,
};
use vhost::VhostUserMemoryRegionBase;

use super::{NUM_QUEUES, VHOST_USER_F_PROTOCOL_FEATURES};
use crate::devices::virtio::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

type Result<T> = std::result::Result<T, Error>;

/// What virtiofsd 1.14 offers: VERSION_1, INDIRECT_DESC, EVENT_IDX, PROTOCOL_FEATURES,
/// LOG_ALL.
pub const VIRTIOFSD_FEATURES: u64 = VIRTIO_F_VERSION_1
    | (1 << 28)
    | VIRTIO_RING_F_EVENT_IDX
    | VHOST_USER_F_PROTOCOL_FEATURES
    | (1 << 26);

/// virtiofsd 1.14's protocol features (with a tag, which adds CONFIG).
pub fn virtiofsd_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::DEVICE_STATE
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::CONFIG
}

#[derive(Debug, Default)]
pub struct Vring {
    pub num: u32,
    /// Descriptor table, used ring, available ring, as the frontend sent them.
    pub addr: (u64, u64, u64),
    pub base: u32,
    pub kick: Option<File>,
    pub call: Option<File>,
    pub enabled: bool,
}

/// The fake's answers and what it was told.
#[derive(Debug)]
pub struct FakeBackend {
    pub features: u64,
    pub protocol_features: VhostUserProtocolFeatures,
    pub queue_num: u64,
    /// A message name (as logged) that the fake refuses.
    pub refuse: Option<&'static str>,
    /// Every message, in order.
    pub log: Vec<&'static str>,
    pub acked_features: u64,
    pub acked_protocol_features: u64,
    /// Guest address, size, frontend address and fd offset of each region.
    pub regions: Vec<(u64, u64, u64, u64)>,
    pub mem_files: Vec<File>,
    pub vrings: [Vring; NUM_QUEUES],
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self {
            features: VIRTIOFSD_FEATURES,
            protocol_features: virtiofsd_protocol_features(),
            queue_num: NUM_QUEUES as u64,
            refuse: None,
            log: Vec::new(),
            acked_features: 0,
            acked_protocol_features: 0,
            regions: Vec::new(),
            mem_files: Vec::new(),
            vrings: Default::default(),
        }
    }
}

/// The fake, running.
#[derive(Debug)]
pub struct Running {
    pub state: Arc<Mutex<FakeBackend>>,
    /// The backend's end of the socket (a clone of the handler's).
    socket: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    pub fn state(&self) -> MutexGuard<'_, FakeBackend> {
        self.state.lock().unwrap()
    }

    /// The backend goes away, as a crashed virtiofsd would.
    pub fn hang_up(mut self) {
        self.socket.shutdown(std::net::Shutdown::Both).unwrap();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Starts `fake` on one end of a socket pair; returns the frontend's end.
pub fn spawn(fake: FakeBackend) -> (UnixStream, Running) {
    let (frontend, backend) = UnixStream::pair().unwrap();
    let state = Arc::new(Mutex::new(fake));
    let mut handler = BackendReqHandler::from_stream(backend, state.clone());
    let socket = handler.try_clone_connection().unwrap();
    let closer = handler.try_clone_connection().unwrap();
    // Like a real backend, the fake closes the connection after an error.
    let thread = std::thread::spawn(move || {
        while handler.handle_request().is_ok() {}
        let _ = closer.shutdown(std::net::Shutdown::Both);
    });
    (
        frontend,
        Running {
            state,
            socket,
            thread: Some(thread),
        },
    )
}

fn refused() -> Error {
    Error::ReqHandlerError(std::io::Error::other("refused by the fake backend"))
}

fn unexpected(what: &'static str) -> Error {
    Error::InvalidOperation(what)
}

impl FakeBackend {
    fn note(&mut self, what: &'static str) -> Result<()> {
        self.log.push(what);
        if self.refuse == Some(what) {
            return Err(refused());
        }
        Ok(())
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.vrings.get_mut(i))
            .ok_or(Error::InvalidParam)
    }
}

impl VhostUserBackendReqHandlerMut for FakeBackend {
    fn set_owner(&mut self) -> Result<()> {
        self.note("SET_OWNER")
    }
    fn reset_owner(&mut self) -> Result<()> {
        self.note("RESET_OWNER")
    }
    fn reset_device(&mut self) -> Result<()> {
        self.note("RESET_DEVICE")
    }
    fn get_features(&mut self) -> Result<u64> {
        self.note("GET_FEATURES")?;
        Ok(self.features)
    }
    fn set_features(&mut self, features: u64) -> Result<()> {
        self.note("SET_FEATURES")?;
        self.acked_features = features;
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.note("SET_MEM_TABLE")?;
        self.regions = ctx
            .iter()
            .map(|r| (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset))
            .collect();
        self.mem_files = files;
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        self.note("SET_VRING_NUM")?;
        self.vring(index)?.num = num;
        Ok(())
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        self.note("SET_VRING_ADDR")?;
        self.vring(index)?.addr = (descriptor, used, available);
        Ok(())
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.note("SET_VRING_BASE")?;
        self.vring(index)?.base = base;
        Ok(())
    }
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.note("GET_VRING_BASE")?;
        let vring = self.vring(index)?;
        vring.kick = None;
        vring.call = None;
        vring.enabled = false;
        Ok(VhostUserVringState::new(index, vring.base))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.note("SET_VRING_KICK")?;
        self.vring(index.into())?.kick = fd;
        Ok(())
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.note("SET_VRING_CALL")?;
        self.vring(index.into())?.call = fd;
        Ok(())
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Result<()> {
        self.note("SET_VRING_ERR")
    }
    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        self.note("GET_PROTOCOL_FEATURES")?;
        Ok(self.protocol_features)
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.note("SET_PROTOCOL_FEATURES")?;
        self.acked_protocol_features = features;
        Ok(())
    }
    fn get_queue_num(&mut self) -> Result<u64> {
        self.note("GET_QUEUE_NUM")?;
        Ok(self.queue_num)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.note("SET_VRING_ENABLE")?;
        self.vring(index)?.enabled = enable;
        Ok(())
    }
    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        Err(unexpected("GET_CONFIG"))
    }
    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        Err(unexpected("SET_CONFIG"))
    }
    fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<()> {
        Err(unexpected("SET_GPU_SOCKET"))
    }
    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File> {
        Err(unexpected("GET_SHARED_OBJECT"))
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        Err(unexpected("GET_INFLIGHT_FD"))
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> Result<()> {
        Err(unexpected("SET_INFLIGHT_FD"))
    }
    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(unexpected("GET_MAX_MEM_SLOTS"))
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(unexpected("ADD_MEM_REG"))
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(unexpected("REM_MEM_REG"))
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> Result<Option<File>> {
        Err(unexpected("SET_DEVICE_STATE_FD"))
    }
    fn check_device_state(&mut self) -> Result<()> {
        Err(unexpected("CHECK_DEVICE_STATE"))
    }
    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(unexpected("GET_SHMEM_CONFIG"))
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> Result<()> {
        Err(unexpected("SET_LOG_BASE"))
    }
}
