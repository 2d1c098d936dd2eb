/** The runtime: provider choice and sessions over built graphs (docs/ENGINE.md). */
export { CARRY_PREFIX, type CarryMode } from "./carry.js";
export { type CudaOptionsStatus, cudaOptionsStatus } from "./cuda-options.js";
export {
  type ConcreteDevice,
  DEVICES,
  type Device,
  DeviceUnavailableError,
  probeDevice,
  resolveDevice,
} from "./device.js";
export { latestProfile, type ProfileRow, summarizeProfile } from "./profile.js";
export {
  asDeviceMemoryError,
  createSession,
  DeviceMemoryError,
  type HostData,
  type HostTensor,
  type ProviderOptions,
  releaseAllSessions,
  type Session,
  type SessionOptions,
} from "./session.js";
