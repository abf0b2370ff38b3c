// Versions are pinned to the runtimes that wrote and verified the bundle (manifest tool_versions):
// ExecuTorch 1.5.1, ONNX Runtime (training) 1.19.2; TFLite 2.16.1 runs the LiteRT flatbuffers
// (builtin ops only). The same versions are compiled against in CI by ../pom.xml (see README.md).
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "org.dcl.demo"
    compileSdk = 35
    defaultConfig {
        applicationId = "org.dcl.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    // .pte / .onnx / .tflite / checkpoint files must stay uncompressed and byte-identical (sha256)
    androidResources { noCompress += listOf("pte", "ptd", "onnx", "tflite", "bin", "json", "") }
    sourceSets["main"].java.srcDirs("src/main/kotlin", "src/executorch/kotlin")
    sourceSets["test"].java.srcDirs("src/test/kotlin")
}

kotlin { jvmToolchain(17) }

dependencies {
    implementation("org.pytorch:executorch-android:1.5.1")
    implementation("com.facebook.fbjni:fbjni:0.7.0")
    implementation("com.facebook.soloader:nativeloader:0.10.5")
    implementation("com.microsoft.onnxruntime:onnxruntime-training-android:1.19.2")
    implementation("org.tensorflow:tensorflow-lite:2.16.1")
    testImplementation("junit:junit:4.13.2")
    testImplementation("org.json:json:20240303")
}
