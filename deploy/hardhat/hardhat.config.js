// A local dev chain for chaincast: no contracts, only blocks.
// Mining: automine stays on (transactions mine at once); chaincast's start_hardhat turns on
// interval mining over JSON-RPC (evm_setIntervalMining) so the head moves on its own.
// Cancun (post-London) gives EIP-1559 base fees and mainnet-shaped blocks.
module.exports = {
  networks: {
    hardhat: {
      chainId: 31337,
      hardfork: "cancun",
      initialBaseFeePerGas: 1_000_000_000,
      mining: { auto: true },
      loggingEnabled: false,
    },
  },
};
