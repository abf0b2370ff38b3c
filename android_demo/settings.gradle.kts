// The dcl Android demo: open this folder in Android Studio. Before building, put a bundle in:
//   .venv/bin/dcl bundle BUNDLE --app android_demo
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "dcl-android-demo"
include(":app")
