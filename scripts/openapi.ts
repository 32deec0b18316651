// Writes openapi.yaml from the routes' schemas (the committed file must equal this output).
import { writeFileSync } from 'node:fs';
import { openapiYaml } from '../src/spec.ts';

writeFileSync(new URL('../openapi.yaml', import.meta.url), await openapiYaml());
console.log('wrote openapi.yaml');
