import { Metrics } from './api/metrics.js';
import type { Service } from './api/service.js';
import { buildApp } from './app.js';
import { loadConfig } from './config.js';

/**
 * A service without a model: the configuration's defaults, counters, and no engine or store unless
 * given. Registering the routes touches neither, so it is enough to build the app and read what it
 * serves (the OpenAPI document; tests of hooks, headers and routes that never reach an engine).
 */
export function modelFreeService(over: Partial<Service> = {}): Service {
  return {
    config: loadConfig({}),
    metrics: new Metrics(),
    inFlight: 0,
    draining: false,
    aborts: new Set(),
    closers: [],
    ...over,
  } as Service;
}

/** The OpenAPI document the routes serve, as YAML; `openapi.yaml` at the repository root is this text. */
export async function openapiYaml(): Promise<string> {
  const app = await buildApp(modelFreeService(), { logger: false });
  await app.ready();
  const yaml = app.swagger({ yaml: true });
  await app.close();
  return yaml;
}
