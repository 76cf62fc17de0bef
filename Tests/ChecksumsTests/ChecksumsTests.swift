import XCTest
import Checksums
import POSIXFiles
import TestSupport

final class ChecksumsTests: XCTestCase {
    func testSHA256MatchesPublishedVectors() {
        XCTAssertEqual(SHA256Hasher.hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256Hasher.hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(SHA256Hasher.hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func testFileHashingAcrossBufferBoundariesEqualsOneShot() throws {
        let t = TempDir(); defer { t.cleanup() }
        // Larger than one read, not a multiple of it, so the last short read is exercised.
        var bytes = [UInt8](repeating: 0, count: FileHasher.maxReadSize + 12345)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        let p = t.write("big.bin", bytes)
        var seen = 0
        let d = try FileHasher.sha256(path: p) { seen += $0 }
        XCTAssertEqual(d.size, Int64(bytes.count))
        XCTAssertEqual(seen, bytes.count)
        XCTAssertEqual(d.sha256, SHA256Hasher.hash(bytes))
        let sys = try ProcessRunner.run("/usr/bin/sha256sum", [p])
        XCTAssertEqual(String(sys.stdout.prefix(64)), d.sha256)
    }

    func testWholeAndPartDigestsInOnePassEqualSeparateHashes() throws {
        let t = TempDir(); defer { t.cleanup() }
        var bytes = [UInt8](repeating: 0, count: 5 * (1 << 20) + 4321)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i &* 131 &+ i >> 9) }
        let p = t.write("parts.bin", bytes)
        for partSize in [1 << 20, 3 << 20, 8 << 20] {
            let (whole, parts) = try FileHasher.sha256WithParts(path: p, partSize: partSize)
            XCTAssertEqual(whole.sha256, SHA256Hasher.hash(bytes))
            XCTAssertEqual(whole.size, Int64(bytes.count))
            let expected = stride(from: 0, to: bytes.count, by: partSize).map { start in
                Digester.digest(.sha256, Array(bytes[start..<min(start + partSize, bytes.count)]))
            }
            XCTAssertEqual(parts, expected, "part size \(partSize)")
        }
        XCTAssertThrowsError(try FileHasher.sha256WithParts(path: t.file("missing.bin"), partSize: 1 << 20)) { e in
            XCTAssertTrue("\(e)".contains("missing.bin"), "\(e)")
        }
    }

    func testMissingFileErrorNamesThePathAndAHint() {
        XCTAssertThrowsError(try FileHasher.sha256(path: "/nonexistent/x.tif")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("/nonexistent/x.tif"), s)
            XCTAssertTrue(s.contains("exists"), s)
        }
    }

    func testVerifiedCopyIsReadOnlyAndIdentical() throws {
        let t = TempDir(); defer { t.cleanup() }
        let src = t.write("a.bin", Array("hello microscope".utf8))
        let d = try FileHasher.copyVerified(from: src, to: t.file("b.bin"))
        XCTAssertEqual(d.sha256, SHA256Hasher.hash("hello microscope"))
        XCTAssertEqual(t.read("b.bin"), "hello microscope")
        XCTAssertEqual(try FileStatus.of(path: t.file("b.bin")).mode & 0o222, 0)
        // The destination must not exist: a copy never replaces a file.
        XCTAssertThrowsError(try FileHasher.copyVerified(from: src, to: t.file("b.bin")))
    }

    func testAtomicWriteLeavesNoTemporaryAndReplacesWhole() throws {
        let t = TempDir(); defer { t.cleanup() }
        try AtomicFile.write("one", to: t.file("f.txt"))
        try AtomicFile.write("two two", to: t.file("f.txt"))
        XCTAssertEqual(t.read("f.txt"), "two two")
        XCTAssertEqual(try listDirectory(t.path).map(\.name), ["f.txt"])
        // A temporary of a dead process on this host is removed; one of a live process (ours) is not.
        t.write(AtomicFile.temporaryPrefix + "\(AtomicFile.hostName)-999999999-x-f.txt", "partial")
        let mine = AtomicFile.temporaryPath(for: t.file("g.txt"))
        _ = FileManager.default.createFile(atPath: mine, contents: Data("writing".utf8))
        t.write(AtomicFile.temporaryPrefix + "otherhost-1-x-f.txt", "another node's")
        XCTAssertEqual(AtomicFile.removeStaleTemporaries(in: t.path), 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: mine))
        XCTAssertTrue(t.exists(AtomicFile.temporaryPrefix + "otherhost-1-x-f.txt"))
    }

    /// Reserving space works on a disk file system (fallocate) and on tmpfs (sparse, after a free-space
    /// check): the file has the size and reads as zeros; asking for more than the file system holds
    /// fails at once with ENOSPC instead of partway through a download.
    func testPreallocateOnDiskAndTmpfsAndTooLarge() throws {
        let disk = TempDir(); defer { disk.cleanup() }
        var dirs = [disk.path]
        let shm = "/dev/shm/emflow-prealloc-\(getpid())"
        if mkdir(shm, 0o700) == 0 { dirs.append(shm) }
        defer { _ = try? FileManager.default.removeItem(atPath: shm) }
        for dir in dirs {
            let path = dir + "/reserved.bin"
            do {
                let fd = try FileDescriptor(path: path, mode: .createExclusive(permissions: 0o600))
                try fd.preallocate(3 << 20)
                XCTAssertEqual(try fd.status().size, 3 << 20, dir)
            }
            let bytes = try readFile(path)
            XCTAssertEqual(bytes.count, 3 << 20, dir)
            XCTAssertTrue(bytes.allSatisfy { $0 == 0 }, dir)
            let fd = try FileDescriptor(path: dir + "/huge.bin", mode: .createExclusive(permissions: 0o600))
            var vfs = statvfs()
            XCTAssertEqual(statvfs(dir, &vfs), 0)
            let tooMuch = Int64(vfs.f_bavail) * Int64(vfs.f_frsize) + (1 << 30)
            XCTAssertThrowsError(try fd.preallocate(tooMuch), dir) { e in
                XCTAssertEqual((e as? POSIXFileError)?.errno, ENOSPC, "\(dir): \(e)")
            }
        }
    }

    func testPathNormalization() {
        XCTAssertEqual(Path.normalize("/a/./b//c/../d"), "/a/b/d")
        XCTAssertEqual(Path.normalize("/../a"), "/a")
        XCTAssertEqual(Path.relative("/r/a/b", to: "/r"), "a/b")
        XCTAssertNil(Path.relative("/ra/b", to: "/r"))
    }
}
