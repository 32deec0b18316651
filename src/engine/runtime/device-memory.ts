import { execFileSync } from 'node:child_process';

/** The CUDA device an engine runs on (the provider's default: one GPU per engine). */
export const CUDA_DEVICE_ID = 0;

/** Runs a command and returns its standard output (execFileSync's shape), for tests to replace. */
export type RunCommand = (file: string, args: string[]) => string;

const run: RunCommand = (file, args) =>
  execFileSync(file, args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });

/**
 * The free memory of CUDA device `deviceId` in bytes, as the driver reports it through
 * `nvidia-smi --query-gpu=memory.free` (MiB), or undefined where that cannot be known (no
 * nvidia-smi, no such device, an answer that is not a number). Asked once the sessions have loaded
 * their weights onto the device, it is what the KV cache may take from.
 */
export function cudaFreeMemory(deviceId: number, command: RunCommand = run): number | undefined {
  let out: string;
  try {
    out = command('nvidia-smi', [`--id=${deviceId}`, '--query-gpu=memory.free', '--format=csv,noheader,nounits']);
  } catch {
    return undefined;
  }
  const mib = Number(out.trim());
  return out.trim() !== '' && Number.isFinite(mib) && mib >= 0 ? mib * 2 ** 20 : undefined;
}
