// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Erc3009DepositCollector} from "../src/Erc3009DepositCollector.sol";
import {MockUSDC} from "../src/mocks/MockUSDC.sol";
import {UptoEscrow} from "../src/UptoEscrow.sol";
import {console} from "../test/utils/Test.sol";
import {vm} from "../test/utils/Vm.sol";

/// @title Deploy
/// @notice Deploys UptoEscrow, its ERC-3009 deposit collector and, optionally, MockUSDC; prints the addresses and
///         writes them as JSON.
/// @dev Usage (any RPC; the signer comes from `--private-key`/`--account` or the PRIVATE_KEY variable):
///      `forge script script/Deploy.s.sol --rpc-url $RPC_URL --broadcast --private-key $KEY`
///      Environment: DEPLOY_MOCK_USDC (default true), PRIVATE_KEY (optional), DEPLOYMENT_FILE (default
///      `deployments/<chainId>.json`; must stay under `deployments/`, the only writable folder for scripts).
///      Run by anvil's first account on a fresh anvil, the addresses are those in test/fixtures/vectors.json:
///      escrow (nonce 0) 0x5FbDB2315678afecb367f032d93F642f64180aa3, collector (nonce 1)
///      0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512, MockUSDC (nonce 2) 0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0.
contract Deploy {
    function run() external {
        bool deployMock = vm.envOr("DEPLOY_MOCK_USDC", true);
        uint256 key = vm.envOr("PRIVATE_KEY", uint256(0));
        string memory file =
            vm.envOr("DEPLOYMENT_FILE", string.concat("deployments/", vm.toString(block.chainid), ".json"));

        if (key != 0) vm.startBroadcast(key);
        else vm.startBroadcast();
        UptoEscrow escrow = new UptoEscrow();
        Erc3009DepositCollector collector = new Erc3009DepositCollector(address(escrow));
        address usdc = deployMock ? address(new MockUSDC()) : address(0);
        vm.stopBroadcast();

        console.log(string.concat("chainId                 ", vm.toString(block.chainid)));
        console.log(string.concat("UptoEscrow              ", vm.toString(address(escrow))));
        console.log(string.concat("Erc3009DepositCollector ", vm.toString(address(collector))));
        if (deployMock) console.log(string.concat("MockUSDC                ", vm.toString(usdc)));

        string memory json = string.concat(
            "{\n  \"chainId\": ",
            vm.toString(block.chainid),
            ",\n  \"escrow\": \"",
            vm.toString(address(escrow)),
            "\",\n  \"erc3009DepositCollector\": \"",
            vm.toString(address(collector)),
            deployMock ? string.concat("\",\n  \"mockUsdc\": \"", vm.toString(usdc), "\"\n}\n") : "\"\n}\n"
        );
        vm.createDir("deployments", true);
        vm.writeFile(file, json);
        console.log(string.concat("written to ", file));
    }
}
