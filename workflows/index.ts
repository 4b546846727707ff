export { searchWorkflow, progressQuery } from './search';
