#!/usr/bin/env node
/** Entry point: `mds-ingest --help`. */
import { main } from '../src/cli.js';

process.exitCode = await main(process.argv.slice(2));
