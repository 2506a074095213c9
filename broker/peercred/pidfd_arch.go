//go:build !(mips || mipsle || mips64 || mips64le)

package peercred

// pidfdArch reports whether soPeerPidfd is SO_PEERPIDFD on this architecture.
const pidfdArch = true
