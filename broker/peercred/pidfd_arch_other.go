//go:build mips || mipsle || mips64 || mips64le

package peercred

// pidfdArch: MIPS numbers SO_PEERPIDFD differently; brokerd uses SO_PEERCRED alone.
const pidfdArch = false
