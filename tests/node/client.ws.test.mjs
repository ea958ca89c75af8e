// Port of tursodatabase/libsql-client-ts packages/libsql-client/src/__tests__/client.test.ts
// over the "ws" transport (see client.suite.mjs for the port itself and helpers.mjs for transports).
import { defineClientSuite } from "./client.suite.mjs";

defineClientSuite("ws");
