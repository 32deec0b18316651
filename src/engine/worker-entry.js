// Worker threads start without the parent's TypeScript loader when the parent registered it at run
// time (bin/steerd.js): register it here, then load the engine worker.
import { register } from 'tsx/esm/api';

register();
await import('./worker.ts');
