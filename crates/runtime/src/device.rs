//! Picks the backend at run time: one generic job, run on the Burn backend the device names.
//! It must not copy training code per backend; a backend not compiled in is an error that says which feature to build with.

use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Work to run on whichever backend the device selects: training code is
/// written once, generic over `B`.
pub trait BackendJob {
    type Output;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on `device`'s backend (always with autodiff; inference code
/// uses `B::InnerBackend`).
pub fn dispatch<J: BackendJob>(device: Device, job: J) -> Result<J::Output, String> {
    match device {
        Device::Cpu => Ok(job.run::<burn::backend::Autodiff<burn::backend::Flex>>(Default::default())),
        Device::Wgpu(index) => wgpu(index, job),
        Device::Cuda(index) => cuda(index, job),
    }
}

/// Whether `device`'s backend is compiled into this binary, and if not, how to get it.
pub fn available(device: Device) -> Result<(), String> {
    match device {
        Device::Cpu => Ok(()),
        Device::Wgpu(_) if cfg!(feature = "wgpu") => Ok(()),
        Device::Cuda(_) if cfg!(feature = "cuda") => cuda_driver(),
        Device::Wgpu(_) => Err(missing("wgpu", "wgpu")),
        Device::Cuda(_) => Err(missing("CUDA", "cuda")),
    }
}

/// Whether the NVIDIA driver's library loads: without it the CUDA back end panics on first use
/// (cudarc loads it lazily), so its absence is found here and reported as an error.
fn cuda_driver() -> Result<(), String> {
    for name in [c"libcuda.so.1", c"libcuda.so"] {
        // SAFETY: dlopen with a valid C string; the handle is released at once.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            // SAFETY: a handle dlopen returned, closed once.
            unsafe { libc::dlclose(handle) };
            return Ok(());
        }
    }
    Err("--device cuda: the NVIDIA driver library (libcuda.so.1) cannot be loaded: no NVIDIA driver on this \
         machine, or its folder is missing from LD_LIBRARY_PATH"
        .into())
}

fn missing(what: &str, feature: &str) -> String {
    format!("this nasc was built without {what}; rebuild with `cargo build --release --features {feature}`")
}

#[cfg(feature = "wgpu")]
fn wgpu<J: BackendJob>(index: Option<usize>, job: J) -> Result<J::Output, String> {
    use burn::backend::wgpu::{Wgpu, WgpuDevice};
    let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
    Ok(job.run::<burn::backend::Autodiff<Wgpu>>(device))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu<J: BackendJob>(_: Option<usize>, _: J) -> Result<J::Output, String> {
    Err(missing("wgpu", "wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda<J: BackendJob>(index: usize, job: J) -> Result<J::Output, String> {
    use burn::backend::cuda::{Cuda, CudaDevice};
    Ok(job.run::<burn::backend::Autodiff<Cuda>>(CudaDevice::new(index)))
}

#[cfg(not(feature = "cuda"))]
fn cuda<J: BackendJob>(_: usize, _: J) -> Result<J::Output, String> {
    Err(missing("CUDA", "cuda"))
}

/// Where training runs: `cpu`, `wgpu[:N]`, `cuda[:N]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Device {
    Cpu,
    /// The N-th discrete GPU through wgpu; `None` is wgpu's default device.
    Wgpu(Option<usize>),
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => {
                let i = i.parse::<usize>().map_err(|_| format!("device index must be a number, got `{s}`"))?;
                (k, Some(i))
            }
            None => (s, None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(Device::Cpu),
            ("wgpu", i) => Ok(Device::Wgpu(i)),
            ("cuda", i) => Ok(Device::Cuda(i.unwrap_or(0))),
            _ => Err(format!("unknown device `{s}`; use cpu, wgpu, wgpu:N, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Wgpu(None) => f.write_str("wgpu"),
            Device::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl TryFrom<String> for Device {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Device> for String {
    fn from(d: Device) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_alike() {
        for (text, device) in [
            ("cpu", Device::Cpu),
            ("wgpu", Device::Wgpu(None)),
            ("wgpu:1", Device::Wgpu(Some(1))),
            ("cuda:2", Device::Cuda(2)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(device));
            assert_eq!(device.to_string(), text);
        }
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert!("cpu:1".parse::<Device>().is_err() && "tpu".parse::<Device>().is_err());
    }
}
