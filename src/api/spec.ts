import { buildApp } from '../app.js';
import { loadConfig } from '../config.js';
import { Metrics } from './metrics.js';
import type { Service } from './service.js';

/**
 * The OpenAPI document the routes serve, as YAML. Registering routes touches no model, so a
 * service without an engine is enough; `openapi.yaml` at the repository root is this text.
 */
export async function openapiYaml(): Promise<string> {
  const svc = {
    config: loadConfig({}),
    metrics: new Metrics(),
    inFlight: 0,
    draining: false,
    aborts: new Set(),
    closers: [],
  } as unknown as Service;
  const app = await buildApp(svc, { logger: false });
  await app.ready();
  const yaml = app.swagger({ yaml: true });
  await app.close();
  return yaml;
}
