package org.dcl.demo.ui

import android.content.Context
import java.io.File
import org.dcl.demo.core.Bundle

/**
 * Runtimes load from file paths, so the bundle `dcl bundle --app` put under assets/bundle/ is copied
 * into the app's files folder (once per manifest: a new bundle replaces it) and then opened, which
 * verifies every artifact's sha256.
 */
object BundleInstaller {
    private const val ASSET_DIR = "bundle"

    fun open(context: Context): Bundle {
        val dest = File(context.filesDir, ASSET_DIR)
        val manifest = context.assets.open("$ASSET_DIR/${Bundle.MANIFEST}").use { it.readBytes() }
        val installed = File(dest, Bundle.MANIFEST)
        if (!installed.isFile || !installed.readBytes().contentEquals(manifest)) {
            dest.deleteRecursively()
            copy(context, ASSET_DIR, dest)
        }
        return Bundle.open(dest)
    }

    private fun copy(context: Context, asset: String, to: File) {
        val children = context.assets.list(asset) ?: emptyArray()
        if (children.isEmpty()) {
            to.parentFile?.mkdirs()
            context.assets.open(asset).use { input -> to.outputStream().use { input.copyTo(it) } }
        } else {
            children.forEach { copy(context, "$asset/$it", File(to, it)) }
        }
    }
}
