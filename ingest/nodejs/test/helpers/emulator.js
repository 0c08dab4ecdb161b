/** The official Pub/Sub emulator on a free loopback port, as its own process group. */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

export const EMULATOR_BIN = '/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator';

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => { socket.destroy(); resolve(true); });
    socket.on('error', () => resolve(false));
  });
}

/** Start it and wait until it listens; `stop()` kills the whole group and removes its data dir. */
export async function startEmulator({ timeoutMs = 60_000 } = {}) {
  const port = await freePort();
  const dataDir = mkdtempSync(`${tmpdir()}/pubsub-emulator-node-`);
  const child = spawn(EMULATOR_BIN, ['--host=127.0.0.1', `--port=${port}`, `--data-dir=${dataDir}`],
    { detached: true, stdio: 'ignore' });
  let exited = false;
  child.on('exit', () => { exited = true; });
  const stop = async () => {
    if (!exited) {
      try { process.kill(-child.pid, 'SIGTERM'); } catch { /* already gone */ }
      for (let i = 0; i < 50 && !exited; i += 1) await sleep(100);
      if (!exited) { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ } }
    }
    rmSync(dataDir, { recursive: true, force: true });
  };
  const deadline = Date.now() + timeoutMs;
  while (!(await canConnect(port))) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`Pub/Sub emulator did not listen on 127.0.0.1:${port}`);
    }
    await sleep(100);
  }
  return { host: `127.0.0.1:${port}`, stop };
}
