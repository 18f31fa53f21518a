export { FogschedError, ConfigError, ServiceUnavailableError, coerceError } from '../domain/errors.js';
